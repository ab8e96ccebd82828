/**
 * Prefix reuse on the real engine (node-llama-cpp, the tiny generated model). Each reusing
 * turn runs in a fresh process, so the only way to the cached tokens is a state file: it
 * must be another conversation's, found through the prefix index, loaded read-only and cut
 * back at the first differing token. The reference for every reply is a cold full prefill
 * (greedy decoding): reuse may change speed, never the reply.
 */
import { promises as fs } from "node:fs";
import type { LlamaModel, Token } from "node-llama-cpp";
import { beforeAll, describe, expect, it } from "vitest";
import { createLlamaCppCompletion, modelIdFromModel } from "../../src/engines/node-llama-cpp/index.js";
import { cachePathOf, manifestPathOf } from "../../src/layout/paths.js";
import { committedTokens } from "../helpers/committed-state.js";
import { type CacheMessage, generateConfigHash, KvKeepError, openKvCacheStore, type KvCacheStore } from "../../src/index.js";
import { coldGreedyReply, createContext, loadFixtureModel, renderChat, type ChatMessage } from "../fixtures/engine.js";
import { bundleFixture, runChild } from "../helpers/child.js";
import { tempDir } from "../helpers/temp-root.js";

const MAX = 16;
const CONTEXT = 512;
let model: LlamaModel;
let modelPath: string;
let child: string;

beforeAll(async () => {
  ({ model, path: modelPath } = await loadFixtureModel("tiny"));
  child = await bundleFixture("test/engine/fixtures/turn-child.ts");
});

const system: CacheMessage = { role: "system", content: "You are a terse assistant who answers every question with a riddle of your own." };
const u1: CacheMessage = { role: "user", content: "What walks on four legs in the morning?" };
const u2: CacheMessage = { role: "user", content: "And what about the evening, then?" };
const configHash = generateConfigHash(system.content);

interface TurnResult {
  text: string;
  stats: { hit: boolean; reusedTokens: number; promptTokens: number; evaluatedTokens: number; source: string; sourceKey: string | null };
}

/** One completion in a fresh process on `root` (already started as `run`, if given). */
async function turnInChild(root: string, history: CacheMessage[], kvCache: string | boolean, run = startTurnInChild(root, history, kvCache)): Promise<TurnResult> {
  const line = await run.waitForLine((l) => l.startsWith("{"), 90_000);
  expect(await run.exited, run.stderr()).toBe(0);
  return JSON.parse(line) as TurnResult;
}

function startTurnInChild(root: string, history: CacheMessage[], kvCache: string | boolean) {
  return runChild(child, [modelPath, root, JSON.stringify({ history, kvCache, maxTokens: MAX })]);
}

function coldReply(history: CacheMessage[]): Promise<string> {
  return coldGreedyReply(model, history as ChatMessage[], { contextSize: CONTEXT, maxTokens: MAX });
}

/** The tokens a committed cache's state holds (its chunks joined when it is chunked; nothing is changed). */
async function stateTokens(cachePath: string): Promise<Token[]> {
  return (await committedTokens(cachePath)) as Token[];
}

function commonPrefix(a: readonly Token[], b: readonly Token[]): number {
  let n = 0;
  while (n < a.length && n < b.length && a[n] === b[n]) n++;
  return n;
}

/** A two-turn auto conversation committed by an adapter in this process; returns its history and cache. */
async function seedConversation(store: KvCacheStore): Promise<{ history: CacheMessage[]; cachePath: string }> {
  const adapter = createLlamaCppCompletion({ threads: 1, model, store, contextSize: CONTEXT });
  const t1 = await adapter.completion({ history: [system, u1], kvCache: true, maxTokens: MAX, temperature: 0 });
  const h2 = [system, u1, { role: "assistant", content: t1.text }, u2];
  const t2 = await adapter.completion({ history: h2, kvCache: true, maxTokens: MAX, temperature: 0 });
  await adapter.dispose();
  const history = [...h2, { role: "assistant", content: t2.text }];
  const cachePath = store.createSession(modelIdOf()).autoCachePath(configHash, history);
  await fs.access(cachePath);
  return { history, cachePath };
}

const modelIdOf = (): string => modelIdFromModel(model);

async function fileSnapshot(cachePath: string): Promise<string> {
  const st = await fs.stat(cachePath, { bigint: true });
  const bytes = await fs.readFile(cachePath);
  return JSON.stringify({ size: st.size.toString(), mtime: st.mtimeNs.toString(), ino: st.ino.toString(), bytes: bytes.toString("base64").length, head: bytes.subarray(0, 64).toString("hex"), manifest: await fs.readFile(manifestPathOf(cachePath), "utf8") });
}

describe("starting from another conversation's cache (real engine, each reuse in a fresh process)", () => {
  it("regenerate, edit-last, edit-first, a new chat and a named fork reuse exactly the common token prefix with the best cache, and reply as a cold run", async () => {
    const root = tempDir();
    const store = openKvCacheStore({ root });
    const { history, cachePath: source } = await seedConversation(store);
    await store.close();
    const sourceTokens = await stateTokens(source);
    const before = await fileSnapshot(source);
    const sourceKey = source.split("/").at(-3)!;

    // `shared`: leading messages the scenario shares with a committed conversation.
    const scenarios: Array<{ name: string; history: CacheMessage[]; kvCache: string | boolean; shared: number }> = [
      { name: "regenerate the last reply", history: history.slice(0, -1), kvCache: true, shared: 4 },
      { name: "edit the last user message", history: [...history.slice(0, 3), { role: "user", content: "And what about the night?" }], kvCache: true, shared: 3 },
      { name: "edit the first user message", history: [system, { role: "user", content: "What walks on two legs at noon?" }], kvCache: true, shared: 1 },
      { name: "a new auto chat with the same system prompt", history: [system, { role: "user", content: "Riddle me this." }], kvCache: true, shared: 1 },
      { name: "a new named chat with the same system prompt", history: [system, { role: "user", content: "Another riddle?" }], kvCache: "fresh-chat", shared: 1 },
      { name: "a named fork continuing the conversation", history: [...history, { role: "user", content: "And then?" }], kvCache: "fork", shared: 5 },
    ];
    for (const scenario of scenarios) {
      const prompt = renderChat(model, scenario.history as ChatMessage[]);
      const result = await turnInChild(root, scenario.history, scenario.kvCache);
      expect(result.stats.source, scenario.name).toBe("prefix");
      // The common token prefix with the state it borrowed — never a token more. Exactly it
      // when the source shares messages beyond the system prompt; a new chat's prime keeps the
      // system prompt and gives up at most a few template tokens after it (the adapter loads
      // the source again only when more than 16 tokens would be lost).
      const borrowed = await stateTokens(cachePathOf(root, { scopeId: null, cacheKey: result.stats.sourceKey!, modelId: modelIdOf(), configHash }));
      const common = Math.min(commonPrefix(borrowed, prompt), prompt.length - 1);
      if (scenario.shared > 1) expect(result.stats.reusedTokens, scenario.name).toBe(common);
      else {
        expect(result.stats.reusedTokens, scenario.name).toBeLessThanOrEqual(common);
        expect(result.stats.reusedTokens, scenario.name).toBeGreaterThanOrEqual(common - 16);
      }
      expect(result.stats.reusedTokens + result.stats.evaluatedTokens, scenario.name).toBe(prompt.length);
      // …and at least everything up to where the conversation differs (within a few template tokens).
      const boundary = commonPrefix(renderChat(model, scenario.history.slice(0, scenario.shared) as ChatMessage[], { generationPrompt: false }), prompt);
      expect(result.stats.reusedTokens, scenario.name).toBeGreaterThanOrEqual(Math.min(boundary, prompt.length - 1) - 3);
      expect(result.text, scenario.name).toBe(await coldReply(scenario.history));
      console.log(`${scenario.name}: reused ${result.stats.reusedTokens} of ${result.stats.promptTokens} prompt tokens from ${result.stats.sourceKey}`);
    }

    // The source is untouched (bytes, mtime, inode, manifest), and its own conversation resumes from it fully.
    expect(await fileSnapshot(source)).toBe(before);
    const next = [...history, { role: "user", content: "One more riddle, please." }];
    const resumed = await turnInChild(root, next, true);
    expect(resumed.stats).toMatchObject({ source: "own", sourceKey });
    expect(resumed.stats.reusedTokens).toBe(Math.min(commonPrefix(sourceTokens, renderChat(model, next as ChatMessage[])), sourceTokens.length));
    expect(resumed.text).toBe(await coldReply(next));
  }, 300_000);

  it("never borrows a cache of other weights, another context size or another KV type under the same model id", async () => {
    const root = tempDir();
    const store = openKvCacheStore({ root });
    const seeded = await seedConversation(store);
    const newChat = [system, { role: "user", content: "Riddle me this." }];
    const modelId = modelIdOf();
    const otherWeights = (await loadFixtureModel("tiny", { overrides: { seed: 2 } })).model;
    const variants = [
      createLlamaCppCompletion({ threads: 1, model: otherWeights, store, contextSize: CONTEXT, modelId }),
      createLlamaCppCompletion({ threads: 1, model, store, contextSize: 1024, modelId }),
      createLlamaCppCompletion({ threads: 1, model, store, contextSize: CONTEXT, modelId, contextOptions: { experimentalKvCacheKeyType: "F32", experimentalKvCacheValueType: "F32" } }),
    ];
    for (const adapter of variants) {
      const result = await adapter.completion({ history: newChat, kvCache: true, maxTokens: 4, temperature: 0 });
      expect(result.stats).toMatchObject({ source: "none", reusedTokens: 0 });
      await adapter.dispose();
    }
    // …while the same model and context do borrow it.
    const same = createLlamaCppCompletion({ threads: 1, model, store, contextSize: CONTEXT });
    expect((await same.completion({ history: [system, { role: "user", content: "Riddle me that." }], kvCache: true, maxTokens: 4, temperature: 0 })).stats).toMatchObject({
      source: "prefix",
      sourceKey: seeded.cachePath.split("/").at(-3),
    });
    await same.dispose();
    await store.close();
  }, 120_000);

  it("never starts from another scope's cache (the adapter's default scope or a call's); within a scope it does", async () => {
    const store = openKvCacheStore({ root: tempDir() });
    const adapter = createLlamaCppCompletion({ threads: 1, model, store, contextSize: CONTEXT, scope: "user-a" });
    const t1 = await adapter.completion({ history: [system, u1], kvCache: "chat", maxTokens: MAX, temperature: 0 });
    const h2: CacheMessage[] = [system, u1, { role: "assistant", content: t1.text }, u2];
    const cold = { source: "none", sourceKey: null, reusedTokens: 0 };
    // User B names the same session, on the same adapter: a conversation of its own, primed cold.
    expect((await adapter.completion({ history: h2, kvCache: "chat", scope: "user-b", maxTokens: 4, temperature: 0 })).stats).toMatchObject(cold);
    // A new chat with the same system prompt in another scope, or in the shared space, starts cold too.
    const newChat = (content: string): CacheMessage[] => [system, { role: "user", content }];
    expect((await adapter.completion({ history: newChat("Riddle me this."), kvCache: true, scope: "user-c", maxTokens: 4, temperature: 0 })).stats).toMatchObject(cold);
    const unscoped = createLlamaCppCompletion({ threads: 1, model, store, contextSize: CONTEXT });
    expect((await unscoped.completion({ history: newChat("Riddle me this."), kvCache: true, maxTokens: 4, temperature: 0 })).stats).toMatchObject(cold);
    await unscoped.dispose();
    // In user A's scope (the adapter's default) the same new chat starts from user A's "chat".
    const own = await adapter.completion({ history: newChat("Riddle me that."), kvCache: true, maxTokens: 4, temperature: 0 });
    expect(own.stats).toMatchObject({ source: "prefix", sourceKey: "chat" });
    expect(own.stats.reusedTokens).toBeGreaterThan(0);
    await adapter.dispose();
    await store.close();
  }, 120_000);

  it("a borrow that fails before loading anything leaves the live state alone: the next turn still resumes from its own cache", async () => {
    const store = openKvCacheStore({ root: tempDir() });
    // The store's borrow rejects (an I/O error looking the index up, say) before lending anything.
    const failingBorrow = new Proxy(store, {
      get(target, prop) {
        if (prop === "borrowPrefix") return () => Promise.reject(new KvKeepError("IO_ERROR", "the prefix lookup failed"));
        const value = Reflect.get(target, prop, target) as unknown;
        return typeof value === "function" ? value.bind(target) : value;
      },
    });
    const adapter = createLlamaCppCompletion({ threads: 1, model, store: failingBorrow, contextSize: CONTEXT });
    const t1 = await adapter.completion({ history: [system, u1], kvCache: true, maxTokens: MAX, temperature: 0 });
    const h2: CacheMessage[] = [system, u1, { role: "assistant", content: t1.text }, u2];
    const t2 = await adapter.completion({ history: h2, kvCache: true, maxTokens: MAX, temperature: 0 });
    expect(t2.stats.source).toBe("own");
    expect(t2.stats.reusedTokens).toBeGreaterThan(0);
    expect(t2.text).toBe(await coldReply(h2));
    await adapter.dispose();
    await store.close();
  }, 120_000);

  it("two processes borrowing the same source while this one deletes it each load a whole state or start cold, and reply as a cold run", async () => {
    const root = tempDir();
    const store = openKvCacheStore({ root });
    const { cachePath: source } = await seedConversation(store);
    const key = source.split("/").at(-3)!;
    const histories = [
      [system, { role: "user", content: "First newcomer here." }],
      [system, { role: "user", content: "Second newcomer here." }],
    ];
    const children = histories.map((h) => startTurnInChild(root, h, true));
    // Delete just as they look the source up (right after loading the model): either may find
    // it, be holding it, or miss it — none may load a torn or foreign state.
    await Promise.all(children.map((c) => c.waitForLine((l) => l === "ready", 90_000)));
    await new Promise((r) => setTimeout(r, Math.floor(Math.random() * 20)));
    await store.delete({ kvCacheKey: key });
    const results = await Promise.all(children.map((c, i) => turnInChild(root, histories[i]!, true, c)));
    for (const [i, result] of results.entries()) {
      expect(["prefix", "none"]).toContain(result.stats.source);
      expect(result.text).toBe(await coldReply(histories[i]!));
    }
    await expect(fs.access(source)).rejects.toMatchObject({ code: "ENOENT" });
    await store.close();
  }, 120_000);
});
