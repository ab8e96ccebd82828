/**
 * The node-llama-cpp adapter on the real engine and the tiny generated model. The
 * reference for "same tokens" is the raw engine continuing from its own in-memory state
 * (render, compare, erase the differing tail, evaluate the rest, greedy).
 */
import { promises as fs } from "node:fs";
import path from "node:path";
import { beforeAll, describe, expect, it } from "vitest";
import type { LlamaModel } from "node-llama-cpp";
import { createLlamaCppCompletion } from "../../src/engines/node-llama-cpp/index.js";
import { openKvCacheStore, type CacheMessage, type KvCacheStore } from "../../src/index.js";
import { coldGreedyReply, createContext, greedyGenerate, loadFixtureModel, renderChat, type ChatMessage } from "../fixtures/engine.js";
import { bundleFixture, runChild } from "../helpers/child.js";
import { tempDir } from "../helpers/temp-root.js";

const MAX = 24;
const CONTEXT = 512;
let model: LlamaModel;
let modelPath: string;

beforeAll(async () => {
  ({ model, path: modelPath } = await loadFixtureModel("tiny"));
});

const system: CacheMessage = { role: "system", content: "You are a terse assistant who answers in riddles." };
const u1: CacheMessage = { role: "user", content: "What walks on four legs in the morning?" };
const u2: CacheMessage = { role: "user", content: "And what about the evening, then?" };
const u3: CacheMessage = { role: "user", content: "Tell me one more." };

/** Replies of the raw engine over consecutive turns, continuing from its in-memory state. */
async function referenceReplies(turns: CacheMessage[][]): Promise<string[]> {
  const context = await createContext(model, { contextSize: CONTEXT, threads: 1 });
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

/** A cold full prefill of `history` on a fresh context. */
function coldReply(history: CacheMessage[]): Promise<string> {
  return coldGreedyReply(model, history as ChatMessage[], { contextSize: CONTEXT, maxTokens: MAX });
}

function adapterOn(store: KvCacheStore, extra: Partial<Parameters<typeof createLlamaCppCompletion>[0]> = {}) {
  return createLlamaCppCompletion({ threads: 1, model, store, contextSize: CONTEXT, ...extra });
}

function agreement(a: string, b: string): string {
  let same = 0;
  while (same < Math.min(a.length, b.length) && a[same] === b[same]) same++;
  return `${same}/${Math.max(a.length, b.length)}`;
}

describe.each([
  ["named", "chat-1" as const],
  ["auto", true as const],
])("resuming a %s cache", (_mode, kvCache) => {
  it("gives exactly the tokens of the engine continuing from memory, in a fresh context that loads the state", async () => {
    const [r1, r2, r3] = await referenceReplies([[system, u1], [u2], [u3]]);
    const store = openKvCacheStore({ root: tempDir() });
    const first = adapterOn(store);
    const t1 = await first.completion({ history: [system, u1], kvCache, maxTokens: MAX, temperature: 0 });
    expect(t1.text).toBe(r1);
    expect(t1.stats).toMatchObject({ hit: false, reusedTokens: 0 });
    await first.dispose();

    // A new adapter has a new context: the only way to the cached tokens is the state file.
    const second = adapterOn(store);
    const h2 = [system, u1, { role: "assistant", content: t1.text }, u2];
    const t2 = await second.completion({ history: h2, kvCache, maxTokens: MAX, temperature: 0 });
    expect(t2.text).toBe(r2);
    expect(t2.stats.hit).toBe(true);
    expect(t2.stats.loadMs).toBeGreaterThan(0);
    expect(t2.stats.reusedTokens + t2.stats.evaluatedTokens).toBe(t2.stats.promptTokens);
    // Everything but the new user turn came from the file — less the reply's last token
    // when maxTokens (not an end token) stopped it: the last generated token is never in the KV cache.
    const previous = renderChat(model, [system, u1, { role: "assistant", content: t1.text }] as ChatMessage[]);
    const cutByMaxTokens = t1.text.length === MAX; // byte-level vocab: one token per character
    expect(t2.stats.reusedTokens).toBe(previous.length - (cutByMaxTokens ? 1 : 0));

    // The same adapter's next turn holds the committed state in memory: no load needed.
    const t3 = await second.completion({ history: [...h2, { role: "assistant", content: t2.text }, u3], kvCache, maxTokens: MAX, temperature: 0 });
    expect(t3.text).toBe(r3);
    expect(t3.stats).toMatchObject({ hit: true, loadMs: 0 });

    const cold = await coldReply(h2);
    console.log(`${_mode}: resumed vs cold full prefill agree on ${agreement(t2.text, cold)} characters (byte tokens)`);
    await second.dispose();
  });
});

describe("restarts and mismatches", () => {
  it("a child process resumes the cache another process wrote, with the engine's in-memory tokens", async () => {
    const [r1, r2] = await referenceReplies([[system, u1], [u2]]);
    const root = tempDir();
    const child = await bundleFixture("test/engine/fixtures/turn-child.ts");
    const runTurn = async (history: CacheMessage[]) => {
      const run = runChild(child, [modelPath, root, JSON.stringify({ history, kvCache: true, maxTokens: MAX })]);
      const line = await run.waitForLine((l) => l.startsWith("{"), 60_000);
      expect(await run.exited, run.stderr()).toBe(0);
      return JSON.parse(line) as { text: string; stats: { hit: boolean; reusedTokens: number } };
    };
    const t1 = await runTurn([system, u1]);
    expect(t1.text).toBe(r1);
    const t2 = await runTurn([system, u1, { role: "assistant", content: t1.text }, u2]);
    expect(t2.text).toBe(r2);
    expect(t2.stats.hit).toBe(true);
    expect(t2.stats.reusedTokens).toBeGreaterThan(0);
  });

  it("a turn aborted mid-generation rolls back, and the next turn is as if it never happened", async () => {
    const [r1, r2] = await referenceReplies([[system, u1], [u2]]);
    for (const onRollback of ["clear", "keep-committed"] as const) {
      const store = openKvCacheStore({ root: tempDir(), onRollback });
      const adapter = adapterOn(store);
      const t1 = await adapter.completion({ history: [system, u1], kvCache: "c", maxTokens: MAX, temperature: 0 });
      expect(t1.text).toBe(r1);
      const controller = new AbortController();
      let pieces = 0;
      const h2 = [system, u1, { role: "assistant", content: t1.text }, u2];
      await expect(
        adapter.completion({
          history: h2,
          kvCache: "c",
          maxTokens: MAX,
          temperature: 0,
          signal: controller.signal,
          onToken: () => {
            if (++pieces === 5) controller.abort();
          },
        }),
      ).rejects.toMatchObject({ code: "ABORTED" });
      const retry = await adapter.completion({ history: h2, kvCache: "c", maxTokens: MAX, temperature: 0 });
      expect(retry.text, onRollback).toBe(r2);
      expect(retry.stats.hit, onRollback).toBe(onRollback === "keep-committed");
      await adapter.dispose();
    }
  });

  it("a different model or a different context size never loads another's state: it re-primes", async () => {
    const root = tempDir();
    const store = openKvCacheStore({ root });
    const history = [system, u1];
    const first = adapterOn(store, { modelId: "shared-id" });
    const t1 = await first.completion({ history, kvCache: "same-key", maxTokens: 4, temperature: 0 });
    await first.dispose();
    const h2 = [...history, { role: "assistant", content: t1.text }, u2];

    const otherWeights = (await loadFixtureModel("tiny", { overrides: { seed: 2 } })).model;
    const other = createLlamaCppCompletion({ threads: 1, model: otherWeights, store, contextSize: CONTEXT, modelId: "shared-id" });
    const t2 = await other.completion({ history: h2, kvCache: "same-key", maxTokens: 4, temperature: 0 });
    expect(t1.stats.refused).toBeNull();
    expect(t2.stats).toMatchObject({ hit: false, reusedTokens: 0, loadMs: 0, source: "none" });
    expect(t2.stats.refused).toMatchObject({ reason: "foreign", detail: expect.stringMatching(/fingerprint differs/) });
    await other.dispose();

    const bigger = adapterOn(store, { modelId: "shared-id", contextSize: 1024 });
    const t3 = await bigger.completion({ history: h2, kvCache: "same-key", maxTokens: 4, temperature: 0 });
    expect(t3.stats).toMatchObject({ hit: false, reusedTokens: 0, loadMs: 0, refused: { reason: "foreign" } });
    await bigger.dispose();
  });

  it("a truncated or bit-flipped cache is refused as corrupt (stats.refused), and the turn runs cold", async () => {
    const root = tempDir();
    const store = openKvCacheStore({ root });
    let history: CacheMessage[] = [system];
    /** One turn on a fresh adapter (a fresh context: nothing held in memory), the reply appended to `history`. */
    const turn = async (user: CacheMessage) => {
      const adapter = adapterOn(store);
      try {
        const { text, stats } = await adapter.completion({ history: [...history, user], kvCache: "damaged", maxTokens: 4, temperature: 0 });
        history = [...history, user, { role: "assistant", content: text }];
        return stats;
      } finally {
        await adapter.dispose();
      }
    };
    expect((await turn(u1)).refused).toBeNull();
    const bins = (await fs.readdir(root, { recursive: true })).filter((f) => f.endsWith(".bin"));
    expect(bins).toHaveLength(1);
    const cacheFile = path.join(root, bins[0]!);

    // Truncated (a torn copy, another tool's full disk): its size matches no committed state.
    await fs.truncate(cacheFile, (await fs.stat(cacheFile)).size - 100);
    const truncated = await turn(u2);
    expect(truncated).toMatchObject({ hit: false, reusedTokens: 0, source: "none", refused: { reason: "corrupt" } });
    expect(truncated.refused?.detail).toMatch(/matches no committed state/);

    // Flipped in place (same size, a new mtime): only the checksum can tell, and it does.
    const handle = await fs.open(cacheFile, "r+");
    const { buffer } = await handle.read(Buffer.alloc(1), 0, 1, 64);
    await handle.write(Buffer.from([buffer[0]! ^ 0xff]), 0, 1, 64);
    await handle.close();
    const flipped = await turn(u3);
    expect(flipped).toMatchObject({ hit: false, reusedTokens: 0, source: "none", refused: { reason: "corrupt" } });
    expect(flipped.refused?.detail).toMatch(/checksum/);

    // What the refused turn committed is trusted: the next turn resumes from it, refusing nothing.
    expect(await turn(u1)).toMatchObject({ hit: true, source: "own", refused: null });
  });

  it("regenerating and editing an earlier reply reuse exactly up to the first differing token", async () => {
    const store = openKvCacheStore({ root: tempDir(), onRollback: "keep-committed" });
    const adapter = adapterOn(store);
    const t1 = await adapter.completion({ history: [system, u1], kvCache: "edit", maxTokens: MAX, temperature: 0 });
    const h2 = [system, u1, { role: "assistant", content: t1.text }, u2];
    const t2 = await adapter.completion({ history: h2, kvCache: "edit", maxTokens: MAX, temperature: 0 });

    // Regenerate: the same history again. The cache now holds h2 + reply; the prompt is h2.
    const again = await adapter.completion({ history: h2, kvCache: "edit", maxTokens: MAX, temperature: 0 });
    expect(again.text).toBe(t2.text);
    const promptH2 = renderChat(model, h2 as ChatMessage[]);
    expect(again.stats.reusedTokens).toBe(promptH2.length - 1);

    // Edit the first reply: reuse must stop where the rendered tokens first differ.
    const edited = [system, u1, { role: "assistant", content: `${t1.text}!` }, u2];
    const cached = [...renderChat(model, [...h2, { role: "assistant", content: again.text }] as ChatMessage[])];
    const editedTokens = renderChat(model, edited as ChatMessage[]);
    let firstDiff = 0;
    while (firstDiff < editedTokens.length && editedTokens[firstDiff] === cached[firstDiff]) firstDiff++;
    const afterEdit = await adapter.completion({ history: edited, kvCache: "edit", maxTokens: MAX, temperature: 0 });
    expect(afterEdit.stats.reusedTokens).toBe(firstDiff);
    expect(afterEdit.text).toBe(await coldReply(edited));
    await adapter.dispose();
  });

  it("an already-aborted call rejects with ABORTED before touching any cache", async () => {
    const root = tempDir();
    const adapter = adapterOn(openKvCacheStore({ root }));
    for (const kvCache of ["c", true, false] as const) {
      await expect(
        adapter.completion({ history: [system, u1], kvCache, maxTokens: 4, signal: AbortSignal.abort() }),
      ).rejects.toMatchObject({ code: "ABORTED" });
    }
    const { readdirSync } = await import("node:fs");
    // Nothing but the root's marker, written when the store made the root.
    expect(readdirSync(root, { recursive: true })).toEqual([".kvkeep", path.join(".kvkeep", "root.json")]);
    await adapter.dispose();
  });

  it("passes the caller's conversationId to the store's turn events", async () => {
    const store = openKvCacheStore({ root: tempDir() });
    const ids: string[] = [];
    store.onTurnEvent((e) => ids.push(`${e.type}:${e.conversationId}`));
    const adapter = adapterOn(store);
    await adapter.completion({ history: [system, u1], kvCache: true, maxTokens: 2, conversationId: "thread-7" });
    expect(ids).toEqual(["turnStarted:thread-7", "turnSettled:thread-7"]);
    await adapter.dispose();
  });

  it("with a wrapper that stops on text, the streamed pieces join to exactly the returned text", async () => {
    const plain = (await loadFixtureModel("tiny", { overrides: { chatTemplate: "none" } })).model;
    const adapter = createLlamaCppCompletion({ threads: 1, model: plain, store: openKvCacheStore({ root: tempDir() }), contextSize: CONTEXT });
    let streamed = "";
    const result = await adapter.completion({ history: [system, u1], kvCache: "g", maxTokens: 48, temperature: 0, onToken: (t) => (streamed += t) });
    expect(streamed).toBe(result.text);
    expect(result.text).not.toContain("### Human");
    await adapter.dispose();
  });

  it("kvCache: false is a cold run that touches no cache", async () => {
    const root = tempDir();
    const store = openKvCacheStore({ root });
    const adapter = adapterOn(store);
    const [r1] = await referenceReplies([[system, u1]]);
    const result = await adapter.completion({ history: [system, u1], kvCache: false, maxTokens: MAX, temperature: 0 });
    expect(result.text).toBe(r1);
    expect(result.stats).toMatchObject({ hit: false, reusedTokens: 0, loadMs: 0, saveMs: 0, refused: null });
    expect(result.stats.evaluatedTokens).toBe(result.stats.promptTokens);
    const { readdirSync } = await import("node:fs");
    // Nothing but the root's marker, written when the store made the root.
    expect(readdirSync(root, { recursive: true })).toEqual([".kvkeep", path.join(".kvkeep", "root.json")]);
    await adapter.dispose();
  });
});
