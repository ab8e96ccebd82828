/**
 * The warmer on a real store: turn events arm and cancel it, the default strategy
 * prefetches the real cache file, settings persist under the root, and a turn that starts
 * while a warm is in flight makes the warm's result be discarded.
 */
import { existsSync } from "node:fs";
import { describe, expect, it } from "vitest";
import { createStoreWarmer, generateConfigHash, openKvCacheStore, type WarmFn } from "../../src/index.js";
import { warmSettingsDir } from "../../src/warm/index.js";
import { countingPrime, writeState } from "../helpers/fake-engine.js";
import { tempDir } from "../helpers/temp-root.js";
import { deferred, fakeTimers } from "./helpers.js";

const configHash = generateConfigHash("sys");

describe("warming a real store", () => {
  it("after a committed turn, the armed prefetch warm reads the committed cache file and reports its tokens", async () => {
    const store = openKvCacheStore({ root: tempDir() });
    const timers = fakeTimers();
    const warmer = createStoreWarmer(store, { timers });
    const session = store.createSession("m");
    const turn = await session.beginTurn({ kind: "custom", customKey: "chat-1", configHash, primeIfMissing: countingPrime() });
    expect(warmer.getState("chat-1").active).toBe(true);
    await writeState(turn.savePath, 50_000);
    await session.commitTurn(turn, { kind: "static", messageCount: 3, tokenCount: 420 });
    await warmer.ready("chat-1");
    expect(warmer.getState("chat-1")).toMatchObject({ active: false, armed: true, lastPct: null });
    expect(warmer.getContext("chat-1")).toMatchObject({ cachePath: turn.cachePath, tokenCount: 420 });

    expect(timers.fireAll()).toBe(1);
    await warmer.ready("chat-1");
    expect(warmer.getState("chat-1")).toMatchObject({ lastPct: 100, armed: true });
    warmer.dispose();
    expect(timers.pending()).toEqual([]);
  });

  it("an auto-mode conversation is warmed at its commit target, the cache the next turn loads", async () => {
    const store = openKvCacheStore({ root: tempDir() });
    const seen: string[] = [];
    const warm: WarmFn = async (_id, ctx) => {
      seen.push(String(ctx.cachePath));
      return { inputTokens: 1, cacheReadTokens: 1, outputTokens: 0, cacheWriteTokens: 0 };
    };
    const timers = fakeTimers();
    const warmer = createStoreWarmer(store, { timers, warm });
    const session = store.createSession("m");
    const history = [{ role: "user", content: "hi" }];
    const turn = await session.beginTurn({ kind: "auto", configHash, history, primeIfMissing: countingPrime(), conversationId: "conv-9" });
    await writeState(turn.savePath);
    const target = session.autoCachePath(configHash, [...history, { role: "assistant", content: "hello" }]);
    await session.commitTurn(turn, { kind: "autoRename", targetCachePath: target, messageCount: 2 });
    await warmer.ready("conv-9");
    timers.fireAll();
    await warmer.ready("conv-9");
    expect(seen).toEqual([target]);
    warmer.dispose();
  });

  it("a turn starting while a warm is in flight discards the warm's result", async () => {
    const store = openKvCacheStore({ root: tempDir() });
    const gate = deferred<void>();
    let started = 0;
    const warm: WarmFn = async () => {
      started++;
      await gate.promise;
      return { inputTokens: 10, cacheReadTokens: 5, outputTokens: 0, cacheWriteTokens: 0 };
    };
    const timers = fakeTimers();
    const warmer = createStoreWarmer(store, { timers, warm });
    const session = store.createSession("m");
    const first = await session.beginTurn({ kind: "custom", customKey: "c", configHash, primeIfMissing: countingPrime() });
    await writeState(first.savePath);
    await session.commitTurn(first, { kind: "static", messageCount: 2 });
    await warmer.ready("c");
    timers.fireAll();
    expect(started).toBe(1);
    const second = await session.beginTurn({ kind: "custom", customKey: "c", configHash, primeIfMissing: countingPrime() });
    gate.resolve();
    await warmer.ready("c");
    expect(warmer.getState("c")).toMatchObject({ lastPct: null, active: true, armed: false });
    await session.rollback(second);
    warmer.dispose();
  });

  it("settings persist under the root and a new warmer on the same store root honours them", async () => {
    const root = tempDir();
    const store = openKvCacheStore({ root });
    const timers = fakeTimers();
    const warmer = createStoreWarmer(store, { timers });
    await warmer.setEnabled("chat-x", false);
    await warmer.setIntervalMs("chat-x", 5_000);
    warmer.dispose();
    expect(existsSync(warmSettingsDir(store))).toBe(true);

    const restarted = createStoreWarmer(openKvCacheStore({ root }), { timers });
    expect(await restarted.load("chat-x")).toMatchObject({ enabled: false, intervalMs: 5_000 });
    restarted.dispose();
  });
});
