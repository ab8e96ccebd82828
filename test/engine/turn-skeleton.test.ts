/**
 * The turn skeleton every adapter runs on (src/engines/shared/), through a third adapter
 * written against it over a toy model (fixtures/toy-adapter.ts, fixtures/toy-engine.ts) —
 * with the real store on real files. The real adapters' own tests run the real engines.
 */
import { readdirSync, readFileSync } from "node:fs";
import path from "node:path";
import { describe, expect, it } from "vitest";
import { COMPLETION_STATS_FIELDS } from "../../src/engines/shared/stats.js";
import { openKvCacheStore, type CacheMessage, type KvCacheStore } from "../../src/index.js";
import { listTree } from "../helpers/fake-engine.js";
import { tempDir } from "../helpers/temp-root.js";
import { createToyCompletion, renderToy, type ToyCompletionOptions } from "./fixtures/toy-adapter.js";
import { ToyModel } from "./fixtures/toy-engine.js";

const S: CacheMessage = { role: "system", content: "Be brief." };
const U1: CacheMessage = { role: "user", content: "Hello there" };
const U2: CacheMessage = { role: "user", content: "Tell me more" };
const reply = (content: string): CacheMessage => ({ role: "assistant", content });

function toy(store: KvCacheStore, extra: Partial<ToyCompletionOptions> = {}) {
  const model = extra.model ?? new ToyModel();
  return { model, llm: createToyCompletion({ store, ...extra, model }) };
}

/** The committed state file and manifest of a named cache of the shared space. */
function committed(root: string, key: string): { bin: string; manifest: string } {
  const dir = path.join(root, key, "toy");
  const bin = readdirSync(dir).find((f) => f.endsWith(".bin"))!;
  return { bin: readFileSync(path.join(dir, bin), "utf8"), manifest: readFileSync(path.join(dir, bin.replace(/\.bin$/, ".meta.json")), "utf8") };
}

/** Files below the root that are neither a committed cache, a manifest nor a lock. */
async function strays(root: string): Promise<string[]> {
  return (await listTree(root)).filter((f) => !f.endsWith("/") && !/\.(bin|meta\.json|lock)$/.test(f));
}

/** The reply of the toy model reading `history` cold, with no cache. */
async function coldReply(history: CacheMessage[]): Promise<string> {
  const { llm } = toy(openKvCacheStore({ root: tempDir() }));
  return (await llm.completion({ history, kvCache: false })).text;
}

describe("the turn skeleton, driving a third adapter over a toy model", () => {
  for (const kvCache of ["chat", true] as const) {
    it(`${kvCache === true ? "auto" : "named"} mode: a new adapter resumes the committed cache from disk and replies as a cold read of the conversation`, async () => {
      const root = tempDir();
      const first = toy(openKvCacheStore({ root }));
      const t1 = await first.llm.completion({ history: [S, U1], kvCache });
      expect(t1.stats).toMatchObject({ hit: false, source: "none", reusedTokens: 0, committed: true, commitFailure: null });
      await first.llm.dispose();

      // A new model: the only way to the first turn's tokens is the state file.
      const second = toy(openKvCacheStore({ root }));
      const h2 = [S, U1, reply(t1.text), U2];
      const t2 = await second.llm.completion({ history: h2, kvCache });
      expect(t2.text).toBe(await coldReply(h2));
      expect(t2.stats).toMatchObject({ hit: true, source: "own", committed: true });
      expect(t2.stats.sourceKey).toMatch(kvCache === true ? /^auto-/ : /^chat$/);
      // Everything up to the reply's end came from the file; only the new message was evaluated.
      expect(t2.stats.reusedTokens).toBe(renderToy([S, U1]).length + t1.text.length);
      expect(t2.stats.evaluatedTokens).toBe(t2.stats.promptTokens - t2.stats.reusedTokens);
      expect(second.model.evaluated).toBe(t2.stats.evaluatedTokens);
      expect(await strays(root)).toEqual([]);
    });
  }

  it("calls run one at a time in call order, and a refused call does not stop the ones queued behind it", async () => {
    const { model, llm } = toy(openKvCacheStore({ root: tempDir() }));
    const started: string[] = [];
    const call = (name: string, extra: object = {}) =>
      llm.completion({ history: [S, { role: "user", content: name }], kvCache: name, onToken: () => void (started.includes(name) || started.push(name)), ...extra });
    const results = await Promise.allSettled([call("a"), call("b", { maxTokens: 0 }), call("c"), call("d")]);
    expect(results.map((r) => r.status)).toEqual(["fulfilled", "rejected", "fulfilled", "fulfilled"]);
    expect(started).toEqual(["a", "c", "d"]);
    expect(model.maxConcurrent).toBe(1);
  });

  it("an engine error mid-reply rolls the turn back: the call rejects with it, the committed cache is untouched, and the next turn resumes it", async () => {
    const root = tempDir();
    const { model, llm } = toy(openKvCacheStore({ root }));
    const t1 = await llm.completion({ history: [S, U1], kvCache: "chat" });
    const before = committed(root, "chat");
    const h2 = [S, U1, reply(t1.text), U2];
    model.failGenerate = new Error("the engine fell over");
    model.failAfter = 3;
    await expect(llm.completion({ history: h2, kvCache: "chat" })).rejects.toThrow("the engine fell over");
    expect(committed(root, "chat")).toEqual(before);
    expect(await strays(root)).toEqual([]);
    const t2 = await llm.completion({ history: h2, kvCache: "chat" });
    expect(t2.stats).toMatchObject({ hit: true, source: "own", committed: true });
    expect(t2.text).toBe(await coldReply(h2));
  });

  it("an abort mid-reply rejects with ABORTED and rolls back; the next turn resumes the last committed state", async () => {
    const root = tempDir();
    const { model, llm } = toy(openKvCacheStore({ root }));
    const t1 = await llm.completion({ history: [S, U1], kvCache: "chat" });
    const before = committed(root, "chat");
    const h2 = [S, U1, reply(t1.text), U2];
    const controller = new AbortController();
    model.onCharacter = (i) => i === 2 && controller.abort(new Error("Stop pressed"));
    await expect(llm.completion({ history: h2, kvCache: "chat", signal: controller.signal })).rejects.toMatchObject({ code: "ABORTED" });
    model.onCharacter = null;
    expect(committed(root, "chat")).toEqual(before);
    expect(await strays(root)).toEqual([]);
    const t2 = await llm.completion({ history: h2, kvCache: "chat" });
    expect(t2.stats).toMatchObject({ hit: true, reusedTokens: renderToy([S, U1]).length + t1.text.length });
  });

  it("a call aborted before it starts rejects with ABORTED and creates no cache", async () => {
    const root = tempDir();
    const { llm } = toy(openKvCacheStore({ root }));
    const signal = AbortSignal.abort();
    await expect(llm.completion({ history: [S, U1], kvCache: "chat", signal })).rejects.toMatchObject({ code: "ABORTED" });
    await expect(llm.completion({ history: [S, U1], kvCache: false, signal })).rejects.toMatchObject({ code: "ABORTED" });
    expect((await listTree(root)).filter((f) => f.endsWith(".bin"))).toEqual([]);
  });

  it("a turn the engine declines to commit reports commitFailure incomplete and keeps the previous state", async () => {
    const root = tempDir();
    const { llm } = toy(openKvCacheStore({ root }), { commitOnlyEnded: true });
    const t1 = await llm.completion({ history: [S, U1], kvCache: "chat" });
    expect(t1.stats).toMatchObject({ committed: true, commitFailure: null, finishReason: "stop" });
    const before = committed(root, "chat");
    const h2 = [S, U1, reply(t1.text), U2];
    const cut = await llm.completion({ history: h2, kvCache: "chat", maxTokens: 2 });
    expect(cut.text).toHaveLength(2);
    expect(cut.stats).toMatchObject({ finishReason: "length", committed: false, commitFailure: "incomplete", commitMs: 0, hit: true });
    expect(committed(root, "chat")).toEqual(before);
    expect(await strays(root)).toEqual([]);
  });

  it("opens the engine once, at the first call, and again after a failed open; dispose waits, closes it once, then refuses calls", async () => {
    const { model, llm } = toy(openKvCacheStore({ root: tempDir() }));
    expect(model.opens).toBe(0);
    model.failOpen = new Error("no memory for the context");
    await expect(llm.completion({ history: [S, U1], kvCache: "a" })).rejects.toThrow("no memory for the context");
    await llm.completion({ history: [S, U1], kvCache: "a" });
    await llm.completion({ history: [S, U1], kvCache: false });
    expect(model.opens).toBe(2);
    const last = llm.completion({ history: [S, U2], kvCache: "b" });
    const disposed = llm.dispose();
    await expect(llm.completion({ history: [S, U1], kvCache: "a" })).rejects.toMatchObject({ code: "STORE_CLOSED" });
    expect((await last).text.length).toBeGreaterThan(0);
    await disposed;
    expect(model.closes).toBe(1);
  });

  it("refuses malformed common params with INVALID_ARGUMENT naming the argument, before the engine opens", async () => {
    const { model, llm } = toy(openKvCacheStore({ root: tempDir() }));
    const bad = (params: unknown) => llm.completion(params as never);
    await expect(bad(null)).rejects.toMatchObject({ code: "INVALID_ARGUMENT", argument: "params" });
    await expect(bad({ history: [], kvCache: "k" })).rejects.toMatchObject({ argument: "history" });
    await expect(bad({ history: [{ role: "user" }], kvCache: "k" })).rejects.toMatchObject({ argument: "history" });
    await expect(bad({ history: [U1], kvCache: 1 })).rejects.toMatchObject({ argument: "kvCache" });
    await expect(bad({ history: [U1], kvCache: "k", signal: {} })).rejects.toMatchObject({ argument: "signal" });
    await expect(bad({ history: [U1], kvCache: "k", onToken: "x" })).rejects.toMatchObject({ argument: "onToken" });
    await expect(bad({ history: [U1], kvCache: "k", scope: "" })).rejects.toMatchObject({ argument: "scope" });
    await expect(bad({ history: [U1], kvCache: "k", maxTokens: 0 })).rejects.toMatchObject({ argument: "maxTokens" }); // the engine's own
    expect(model.opens).toBe(0);
    expect(() => createToyCompletion({ model, store: openKvCacheStore({ root: tempDir() }), modelId: "a/b" })).toThrow(
      expect.objectContaining({ code: "KEY_HAS_SEPARATOR" }),
    );
  });

  it("the adapter's scope is every call's default and a call's own scope overrides it: one key in two scopes is two conversations", async () => {
    const root = tempDir();
    const { llm } = toy(openKvCacheStore({ root }), { scope: "user-a" });
    const t1 = await llm.completion({ history: [S, U1], kvCache: "chat" });
    const h2 = [S, U1, reply(t1.text), U2];
    const other = await llm.completion({ history: h2, kvCache: "chat", scope: "user-b" });
    const own = await llm.completion({ history: h2, kvCache: "chat" });
    expect(other.stats).toMatchObject({ hit: false, source: "none" });
    expect(own.stats).toMatchObject({ hit: true, source: "own" });
    expect(readdirSync(root).filter((d) => !d.startsWith("."))).toEqual([]);
    expect(readdirSync(path.join(root, ".scopes"))).toHaveLength(2);
  });

  it("stats have every CompletionStats field in every path, with evaluated = prompt − reused and hit exactly when something was reused", async () => {
    const { llm } = toy(openKvCacheStore({ root: tempDir() }));
    const fields = Object.keys(COMPLETION_STATS_FIELDS).sort();
    const uncached = await llm.completion({ history: [S, U1], kvCache: false });
    const cold = await llm.completion({ history: [S, U1], kvCache: "chat" });
    const resumed = await llm.completion({ history: [S, U1, reply(cold.text), U2], kvCache: "chat" });
    for (const { stats } of [uncached, cold, resumed]) {
      expect(Object.keys(stats).sort()).toEqual(fields);
      expect(stats.evaluatedTokens).toBe(stats.promptTokens - stats.reusedTokens);
      expect(stats.hit).toBe(stats.source !== "none");
      expect(stats.sourceKey === null).toBe(stats.source === "none");
    }
    expect(uncached.stats).toMatchObject({ hit: false, committed: false, commitFailure: null, saveMs: 0, commitMs: 0, loadMs: 0, refused: null });
    expect(cold.stats).toMatchObject({ hit: false, committed: true, completionTokens: cold.text.length });
    expect(resumed.stats).toMatchObject({ hit: true, committed: true });
    expect(resumed.stats.commitMs).toBeLessThanOrEqual(resumed.stats.saveMs);
  });
});
