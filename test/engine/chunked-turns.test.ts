/**
 * Chunked turns on the real engine (the tiny generated model: one token per byte, so a
 * 700-character system prompt is ~10 chunks of 64 tokens). Each turn runs in a fresh adapter
 * (a new context that loads its state from the root), and the reference for "same tokens" is
 * the raw engine continuing from its own in-memory state, as in adapter.test.ts.
 */
import { mkdtempSync, readdirSync, readFileSync, rmSync, statSync } from "node:fs";
import os from "node:os";
import { cp } from "node:fs/promises";
import path from "node:path";
import type { LlamaModel } from "node-llama-cpp";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { decodeKvGeometry } from "../../src/chunks/state-format.js";
import { createLlamaCppCompletion } from "../../src/engines/node-llama-cpp/index.js";
import { modelIdFromModel } from "../../src/engines/node-llama-cpp/fingerprint.js";
import { type CacheMessage, generateConfigHash, type KvCacheStore, openKvCacheStore } from "../../src/index.js";
import { bundleFixture, runChild } from "../helpers/child.js";
import { committedEntry, committedTokens, loadedTokens, manifestFingerprint } from "../helpers/committed-state.js";
import { tempDir } from "../helpers/temp-root.js";
import { coldGreedyReply, createContext, greedyGenerate, loadFixtureModel, renderChat, type ChatMessage } from "../fixtures/engine.js";

const MAX = 16;
const CONTEXT = 2048;
let model: LlamaModel;
let modelPath: string;
let child: string;

beforeAll(async () => {
  ({ model, path: modelPath } = await loadFixtureModel("tiny"));
  child = await bundleFixture("test/engine/fixtures/chunked-turn-child.ts");
});

const system: CacheMessage = { role: "system", content: "You are a careful assistant who keeps every answer short and plain. ".repeat(10) };
const u1: CacheMessage = { role: "user", content: "Tell me how a cache keeps a conversation warm between visits, in a few words please." };
const u2: CacheMessage = { role: "user", content: "And what happens when two conversations start the same way? Say it briefly, once more." };
const u3: CacheMessage = { role: "user", content: "One last thing: what does a crash do to it?" };
/** A second message long enough that its turn completes a new chunk. */
const long2: CacheMessage = { role: "user", content: `${u2.content} ${"Here is more context for you to weigh. ".repeat(10)}` };

/** Replies of the raw engine over consecutive turns, continuing from its in-memory state. */
async function referenceReplies(turns: CacheMessage[][], contextOptions: ContextOptions = {}): Promise<string[]> {
  const context = await createContext(model, { contextSize: CONTEXT, threads: 1, ...contextOptions });
  try {
    const sequence = context.getSequence();
    const replies: string[] = [];
    let history: CacheMessage[] = [];
    for (const newMessages of turns) {
      history = [...history, ...newMessages];
      const tokens = renderChat(model, history as ChatMessage[]);
      const { firstDifferentIndex } = sequence.compareContextTokens(tokens);
      const keep = Math.min(firstDifferentIndex, tokens.length - 1);
      if (sequence.nextTokenIndex > keep) await sequence.eraseContextTokenRanges([{ start: keep, end: sequence.nextTokenIndex }]);
      const { tokens: out, endedWithEog } = await greedyGenerate(sequence, tokens.slice(keep), MAX);
      const reply = model.detokenize(endedWithEog ? out.slice(0, -1) : out);
      replies.push(reply);
      history = [...history, { role: "assistant", content: reply }];
    }
    return replies;
  } finally {
    await context.dispose();
  }
}

/** What a test varies of the engine's context (flash attention: V rows or transposed V). */
type ContextOptions = { flashAttention?: boolean };

function adapterOn(store: KvCacheStore, chunkedStates = true, contextOptions: ContextOptions = {}) {
  return createLlamaCppCompletion({ threads: 1, model, store, contextSize: CONTEXT, chunkedStates, contextOptions });
}

/** One turn in a fresh adapter (a new context: the state comes from the root). */
async function turnWith(store: KvCacheStore, history: CacheMessage[], kvCache: string | true, chunkedStates = true, contextOptions: ContextOptions = {}) {
  const adapter = adapterOn(store, chunkedStates, contextOptions);
  try {
    return await adapter.completion({ history, kvCache, maxTokens: MAX, temperature: 0 });
  } finally {
    await adapter.dispose();
  }
}

/** Every chunk file under the root: id → inode. */
function chunkFiles(root: string): Map<string, bigint> {
  const out = new Map<string, bigint>();
  const base = path.join(root, ".kvkeep", "chunks");
  const walk = (dir: string): void => {
    let entries;
    try {
      entries = readdirSync(dir, { withFileTypes: true });
    } catch {
      return;
    }
    for (const e of entries) {
      const p = path.join(dir, e.name);
      if (e.isDirectory()) walk(p);
      else if (e.name.endsWith(".kvkc")) out.set(e.name.slice(0, -5), statSync(p, { bigint: true }).ino);
    }
  };
  walk(base);
  return out;
}

describe.each([
  ["named", "chat-1" as const, {}],
  ["auto", true as const, {}],
  // Flash attention off: llama.cpp saves V transposed, a chunk's V layer is one strided gather run.
  ["named, flash attention off,", "chat-1" as const, { flashAttention: false }],
])("a chunked %s conversation", (_mode, kvCache, contextOptions: ContextOptions) => {
  const turn = (store: KvCacheStore, history: CacheMessage[], key: string | true) => turnWith(store, history, key, true, contextOptions);
  it("resumes every turn from its chunks with exactly the tokens of the engine continuing from memory, and each commit writes only the chunks its new tokens completed", async () => {
    const [r1, r2, r3] = await referenceReplies([[system, u1], [u2], [u3]], contextOptions);
    const root = tempDir();
    const store = openKvCacheStore({ root });
    const h1 = [system, u1];
    const t1 = await turn(store, h1, kvCache);
    expect(t1.text).toBe(r1);
    expect(t1.stats).toMatchObject({ layout: "chunked", committed: true });

    const h2 = [...h1, { role: "assistant", content: t1.text }, u2];
    const before = chunkFiles(root);
    expect(before.size).toBeGreaterThanOrEqual(2);
    const t2 = await turn(store, h2, kvCache);
    expect(t2.text).toBe(r2);
    expect(t2.stats).toMatchObject({ layout: "chunked", hit: true, source: "own", committed: true });
    expect(t2.stats.reusedTokens).toBeGreaterThan(2 * 256);
    const after = chunkFiles(root);
    // The chunks the first turn wrote are the same files (touched, never rewritten) ...
    for (const [id, ino] of before) expect(after.get(id), `chunk ${id}`).toBe(ino);
    // ... and the new ones are exactly the new full chunks of the second turn's state.
    const cache2 = cachePathAfter(store, kvCache, [...h2, { role: "assistant", content: t2.text }]);
    const entry2 = await committedEntry(cache2);
    expect(entry2.chunks).toBeTruthy();
    // Flash attention off saves V transposed (on, or "auto" on a CPU: V rows).
    expect(decodeKvGeometry(Buffer.from(entry2.chunks!.geometry, "base64")).vTrans).toBe(contextOptions.flashAttention === false);
    const ids2 = entry2.chunks!.ids;
    expect(ids2.length).toBe(Math.floor(entry2.chunks!.tokens / entry2.chunks!.chunkTokens));
    const added = [...after.keys()].filter((id) => !before.has(id)).sort();
    expect(added).toEqual(ids2.filter((id) => !before.has(id)).sort());
    // The cache file is only the tail: less than one chunk of KV.
    expect(statSync(cache2).size).toBeLessThan(readFileSync(path.join(root, ".kvkeep", "chunks", entry2.chunks!.context, ids2[0]!.slice(0, 2), `${ids2[0]}.kvkc`)).byteLength);

    const h3 = [...h2, { role: "assistant", content: t2.text }, u3];
    const t3 = await turn(store, h3, kvCache);
    expect(t3.text).toBe(r3);
    expect(t3.stats).toMatchObject({ layout: "chunked", hit: true, source: "own" });
    await store.close();
  });
});

describe("chunked storage across conversations, layouts and failures", () => {
  it("two conversations opening with the same long system prompt store its chunks once", async () => {
    const root = tempDir();
    const store = openKvCacheStore({ root });
    const a = await turnWith(store, [system, u1], "chat-a");
    const b = await turnWith(store, [system, u2], "chat-b");
    expect(a.stats.layout).toBe("chunked");
    expect(b.stats.layout).toBe("chunked");
    const ea = (await committedEntry(cachePathAfter(store, "chat-a", []))).chunks!;
    const eb = (await committedEntry(cachePathAfter(store, "chat-b", []))).chunks!;
    const shared = Math.floor(renderChat(model, [system] as ChatMessage[]).length / ea.chunkTokens) - 1;
    expect(shared).toBeGreaterThanOrEqual(1);
    expect(eb.ids.slice(0, shared)).toEqual(ea.ids.slice(0, shared));
    expect(chunkFiles(root).size).toBe(new Set([...ea.ids, ...eb.ids]).size);
    await store.close();
  });

  it("a whole-file cache (an existing root) keeps loading in a chunked session, and its next commit is chunked", async () => {
    const [r1, r2] = await referenceReplies([[system, u1], [u2]]);
    const root = tempDir();
    const store = openKvCacheStore({ root });
    const t1 = await turnWith(store, [system, u1], "old", false);
    expect(t1.text).toBe(r1);
    expect(t1.stats.layout).toBe("whole");
    expect((await committedEntry(cachePathAfter(store, "old", []))).chunks).toBeUndefined();
    const t2 = await turnWith(store, [system, u1, { role: "assistant", content: t1.text }, u2], "old");
    expect(t2.text).toBe(r2);
    expect(t2.stats).toMatchObject({ layout: "chunked", hit: true, source: "own" });
    expect((await committedEntry(cachePathAfter(store, "old", []))).chunks?.ids.length).toBeGreaterThanOrEqual(3);
    await store.close();
  });

  it.each(["tinySwa", "tinyMamba"] as const)("%s (a state kvkeep cannot split) keeps whole files, and stats say so", async (shape) => {
    const { model: other } = await loadFixtureModel(shape);
    const root = tempDir();
    const store = openKvCacheStore({ root });
    const adapter = createLlamaCppCompletion({ threads: 1, model: other, store, contextSize: 512 });
    const history: CacheMessage[] = [{ role: "system", content: "Be brief." }, u1];
    const first = await adapter.completion({ history, kvCache: "w", maxTokens: 4, temperature: 0 });
    const second = await adapter.completion({ history: [...history, { role: "assistant", content: first.text }, u2], kvCache: "w", maxTokens: 4, temperature: 0 });
    await adapter.dispose();
    expect(first.stats.layout).toBe("whole");
    expect(second.stats).toMatchObject({ layout: "whole", committed: true });
    expect(chunkFiles(root).size).toBe(0);
    expect(readdirSync(path.join(root, ".kvkeep")).includes("chunks") ? readdirSync(path.join(root, ".kvkeep", "chunks")) : []).toEqual([]);
    await store.close();
  });

  it("a whole-file session refuses a chunked cache as foreign (it would load a tail), re-primes and replies as a cold run", async () => {
    const root = tempDir();
    const store = openKvCacheStore({ root });
    const t1 = await turnWith(store, [system, u1], "mixed");
    const h2 = [system, u1, { role: "assistant", content: t1.text }, u2];
    const t2 = await turnWith(store, h2, "mixed", false);
    expect(t2.stats).toMatchObject({ layout: "whole", refused: { reason: "foreign" } });
    expect(t2.text).toBe(await coldGreedyReply(model, h2 as ChatMessage[], { contextSize: CONTEXT, maxTokens: MAX }));
    await store.close();
  });

  it("a missing chunk makes the cache a miss: the turn runs cold with the cold reply, and its commit stores every chunk again", async () => {
    const root = tempDir();
    const store = openKvCacheStore({ root });
    const t1 = await turnWith(store, [system, u1], "holed");
    const cachePath = cachePathAfter(store, "holed", []);
    const { chunks } = await committedEntry(cachePath);
    const victim = chunks!.ids[1]!;
    rmSync(path.join(root, ".kvkeep", "chunks", chunks!.context, victim.slice(0, 2), `${victim}.kvkc`));
    const h2 = [system, u1, { role: "assistant", content: t1.text }, u2];
    const t2 = await turnWith(store, h2, "holed");
    expect(t2.stats).toMatchObject({ layout: "chunked", hit: false, reusedTokens: 0, committed: true });
    expect(t2.text).toBe(await coldGreedyReply(model, h2 as ChatMessage[], { contextSize: CONTEXT, maxTokens: MAX }));
    const after = await committedEntry(cachePath);
    for (const id of after.chunks!.ids) expect(chunkFiles(root).has(id), `chunk ${id}`).toBe(true);
    expect((await committedTokens(cachePath)).length).toBe(after.chunks!.tokens);
    await store.close();
  });

  it("a regenerate and a named fork borrow from chunks and reply as a cold run; the fork reads only the chunks it shares", async () => {
    const root = tempDir();
    const store = openKvCacheStore({ root });
    const t1 = await turnWith(store, [system, u1], true);
    const h2 = [system, u1, { role: "assistant", content: t1.text }, long2];
    const t2 = await turnWith(store, h2, true);
    // Regenerate the last reply: the same history again (its lookup key was superseded: it borrows).
    const again = await turnWith(store, h2, true);
    expect(again.stats).toMatchObject({ layout: "chunked", hit: true });
    expect(again.text).toBe(await coldGreedyReply(model, h2 as ChatMessage[], { contextSize: CONTEXT, maxTokens: MAX }));

    // A fork continuing the first exchange in a named cache shares ~3 chunks with the longer
    // conversation. Its last full chunk lies beyond what the fork shares: with it gone, the
    // fork still borrows (it never reads it).
    const source = cachePathAfter(store, true, [...h2, { role: "assistant", content: t2.text }]);
    const { chunks } = await committedEntry(source);
    const forkHistory = [system, u1, { role: "assistant", content: t1.text }, u3];
    const prompt = renderChat(model, forkHistory as ChatMessage[]);
    const sourceTokens = await committedTokens(source);
    let common = 0;
    while (prompt[common] === sourceTokens[common]) common++;
    const unshared = chunks!.ids.slice(Math.ceil(common / chunks!.chunkTokens));
    expect(unshared.length).toBeGreaterThanOrEqual(1);
    for (const id of unshared) rmSync(path.join(root, ".kvkeep", "chunks", chunks!.context, id.slice(0, 2), `${id}.kvkc`));
    const fork = await turnWith(store, forkHistory, "fork");
    expect(fork.stats).toMatchObject({ layout: "chunked", source: "prefix", reusedTokens: Math.min(common, prompt.length - 1) });
    expect(fork.text).toBe(await coldGreedyReply(model, forkHistory as ChatMessage[], { contextSize: CONTEXT, maxTokens: MAX }));
    await store.close();
  });
});

/** The tokens of the state a cache holds, as a fresh store loads it (after its recovery and verification), or null when none is trusted. */
async function loadedTokensFresh(root: string, cachePath: string): Promise<number[] | null> {
  const store = openKvCacheStore({ root });
  try {
    await store.ready;
    return await loadedTokens(store, cachePath, await manifestFingerprint(cachePath));
  } finally {
    await store.close();
  }
}

const COMMIT_STEPS = [
  "chunk:after-temp-synced",
  "chunk:after-rename",
  "chunked:after-chunks-stored",
  "chunked:after-tail-temp",
  "install:after-fsync-state",
  "install:after-pending-manifest",
  "install:after-rename",
  "install:after-rename-synced",
  "install:after-final-manifest",
] as const;

/** A root whose named conversation "crashy" committed one turn, and what its second turn commits undisturbed. */
interface CrashBase {
  root: string;
  h2: CacheMessage[];
  previous: number[];
  next: number[];
}
let crashBase: Promise<CrashBase> | null = null;
const lasting: string[] = [];
afterAll(() => {
  for (const dir of lasting) rmSync(dir, { recursive: true, force: true });
});

function makeCrashBase(): Promise<CrashBase> {
  crashBase ??= (async () => {
    // Outlives the test that makes it (tempDir's go after each test): removed in afterAll.
    const root = mkdtempSync(path.join(os.tmpdir(), "kvkeep-crash-base-"));
    lasting.push(root);
    const store = openKvCacheStore({ root });
    const h1 = [system, u1];
    const t1 = await turnWith(store, h1, "crashy");
    const cachePath = cachePathAfter(store, "crashy", []);
    await store.close();
    const previous = await committedTokens(cachePath, root);
    const copy = `${root}-next`;
    lasting.push(copy);
    await cp(root, copy, { recursive: true });
    const h2 = [...h1, { role: "assistant", content: t1.text }, long2];
    const copyStore = openKvCacheStore({ root: copy });
    await turnWith(copyStore, h2, "crashy");
    await copyStore.close();
    const next = await committedTokens(cachePath.replace(root, copy), copy);
    return { root, h2, previous, next };
  })();
  return crashBase;
}

describe("a chunked commit SIGKILLed at each of its steps", () => {
  it.each(COMMIT_STEPS)("at %s leaves the previous turn (before the tail's rename) or the new one (from it on), whole, and the conversation goes on", async (step) => {
    const base = await makeCrashBase();
    // The second turn writes a new chunk (so the chunk steps are reached).
    const chunkTokens = (await committedEntry(customCachePathIn(base.root, "crashy"))).chunks!.chunkTokens;
    expect(Math.floor(base.next.length / chunkTokens)).toBeGreaterThan(Math.floor(base.previous.length / chunkTokens));
    const root = tempDir();
    await cp(base.root, root, { recursive: true });
    const cachePath = customCachePathIn(root, "crashy");
    const run = runChild(child, [modelPath, root, JSON.stringify({ history: base.h2, kvCache: "crashy", maxTokens: MAX, contextSize: CONTEXT })], {
      KVKEEP_TEST_CRASH_AT: step,
    });
    expect(await run.exited, `the child never reached ${step}: ${run.stderr()}`).toBe("SIGKILL");

    const tokens = await loadedTokensFresh(root, cachePath);
    const committedNew = COMMIT_STEPS.indexOf(step) >= COMMIT_STEPS.indexOf("install:after-rename");
    expect(tokens, step).toEqual(committedNew ? base.next : base.previous);

    const again = openKvCacheStore({ root });
    const t3 = await turnWith(again, [...base.h2, { role: "assistant", content: "fine" }, u3], "crashy");
    expect(t3.stats).toMatchObject({ layout: "chunked", hit: true, committed: true });
    await again.close();
  });
});

const configHash = generateConfigHash(system.content);
const modelIdOf = (): string => modelIdFromModel(model);

/** Where a conversation's state is after a commit: the custom key's cache, or auto mode's key of the whole history. */
function cachePathAfter(store: KvCacheStore, kvCache: string | true, history: CacheMessage[]): string {
  const session = store.createSession(modelIdOf());
  return kvCache === true ? session.autoCachePath(configHash, history) : session.customCachePath(kvCache, configHash);
}

function customCachePathIn(root: string, key: string): string {
  const store = openKvCacheStore({ root });
  const cachePath = store.createSession(modelIdOf()).customCachePath(key, configHash);
  void store.close();
  return cachePath;
}
