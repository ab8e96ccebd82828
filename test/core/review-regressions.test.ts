/**
 * Behaviours pinned after a review found them broken: deletes racing turns, fs errors at
 * commit, busy auto targets, durable directory creation, stable auto conversation ids.
 */
import { promises as fs, existsSync } from "node:fs";
import path from "node:path";
import { afterEach, describe, expect, it } from "vitest";
import { setCrashPointHookForTest } from "../../src/durable/crash-points.js";
import { mkdirUnderRoot } from "../../src/durable/files.js";
import { createStoreWarmer, generateConfigHash, openKvCacheStore, type TurnEvent } from "../../src/index.js";
import { processLocks } from "../../src/locks/path-locks.js";
import { countingPrime, customTurn, listTree, writeState } from "../helpers/fake-engine.js";
import { tempDir } from "../helpers/temp-root.js";
import { fakeTimers } from "../warm/helpers.js";

const configHash = generateConfigHash("sys");
afterEach(() => setCrashPointHookForTest(null));

describe("a delete racing a turn never lets the cache come back", () => {
  it("a delete between a commit's rename and its manifest: the commit is refused and nothing is left", async () => {
    const root = tempDir();
    const store = openKvCacheStore({ root });
    const session = store.createSession("m");
    await customTurn(session, "k", configHash, 2);
    const turn = await session.beginTurn({ kind: "custom", customKey: "k", configHash, primeIfMissing: countingPrime() });
    await writeState(turn.savePath);
    let deleted = false;
    setCrashPointHookForTest(async (step) => {
      if (step === "install:after-rename" && !deleted) {
        deleted = true;
        await store.delete({ kvCacheKey: "k" });
      }
    });
    expect(await session.commitTurn(turn, { kind: "static", messageCount: 4 })).toMatchObject({
      committed: false,
      reason: "deleted-during-turn",
    });
    expect(deleted).toBe(true);
    expect(await listTree(root)).toEqual([]);
  });

  it("a delete while the turn is still beginning (priming) fails the beginning with DELETED_DURING_TURN, leaving nothing", async () => {
    const root = tempDir();
    const store = openKvCacheStore({ root });
    const session = store.createSession("m");
    await expect(
      session.beginTurn({
        kind: "custom",
        customKey: "k",
        configHash,
        primeIfMissing: async (p) => {
          await writeState(p);
          await store.delete({ kvCacheKey: "k" });
        },
      }),
    ).rejects.toMatchObject({ code: "DELETED_DURING_TURN" });
    expect(await listTree(root)).toEqual([]);
    // The key is usable again afterwards.
    const again = await session.beginTurn({ kind: "custom", customKey: "k", configHash, primeIfMissing: countingPrime() });
    expect(again.primed).toBe(true);
    await session.rollback(again);
  });
});

describe("commit failures that are kvkeep's own keep the committed cache", () => {
  it("a savePath that is a symlink (here a loop) is refused (UNSAFE_PATH) and the last commit survives under 'clear'", async () => {
    const root = tempDir();
    const store = openKvCacheStore({ root, onRollback: "clear" });
    const session = store.createSession("m");
    const committed = await customTurn(session, "k", configHash, 3);
    const bytes = await fs.readFile(committed.cachePath);
    const turn = await session.beginTurn({ kind: "custom", customKey: "k", configHash, primeIfMissing: countingPrime() });
    await fs.symlink(turn.savePath, turn.savePath);
    expect(await session.commitTurn(turn, { kind: "static", messageCount: 5 })).toMatchObject({
      committed: false,
      reason: "unsafe-path",
      error: { name: "KvKeepError", code: "UNSAFE_PATH" },
      keptCommitted: true,
    });
    expect(await fs.readFile(committed.cachePath)).toEqual(bytes);
    const next = await session.beginTurn({ kind: "custom", customKey: "k", configHash, primeIfMissing: countingPrime() });
    expect(next).toMatchObject({ primed: false, savedCount: 3 });
    await session.rollback(next);
  });
});

describe("an auto commit whose target is briefly held", () => {
  const history = [{ role: "user", content: "hello" }];
  const reply = { role: "assistant", content: "hi" };

  it("waits for the holder when the target does not exist, then installs it", async () => {
    const store = openKvCacheStore({ root: tempDir() });
    const session = store.createSession("m");
    const turn = await session.beginTurn({ kind: "auto", configHash, history, primeIfMissing: countingPrime() });
    await writeState(turn.savePath);
    const target = session.autoCachePath(configHash, [...history, reply]);
    await fs.mkdir(path.dirname(target), { recursive: true });
    const holder = processLocks().tryAcquire(target)!; // e.g. a sweep or recovery
    setTimeout(() => holder.release({ removeLockFile: true }), 50);
    const outcome = await session.commitTurn(turn, { kind: "autoRename", targetCachePath: target, messageCount: 2 });
    expect(outcome).toMatchObject({ committed: true, keptExisting: false, cachePath: target });
    expect(existsSync(target)).toBe(true);
    expect(existsSync(turn.cachePath)).toBe(false);
  });

  it("keeps the existing target (and says so) when a holder is using one", async () => {
    const store = openKvCacheStore({ root: tempDir() });
    const session = store.createSession("m");
    const first = await session.beginTurn({ kind: "auto", configHash, history, primeIfMissing: countingPrime() });
    await writeState(first.savePath);
    const target = session.autoCachePath(configHash, [...history, reply]);
    await session.commitTurn(first, { kind: "autoRename", targetCachePath: target, messageCount: 2 });
    const theirs = await fs.readFile(target);
    const second = await session.beginTurn({ kind: "auto", configHash, history, primeIfMissing: countingPrime() });
    await writeState(second.savePath);
    const holder = processLocks().tryAcquire(target)!; // a turn resuming from it
    const outcome = await session.commitTurn(second, { kind: "autoRename", targetCachePath: target, messageCount: 2 });
    holder.release();
    expect(outcome).toMatchObject({ committed: true, keptExisting: true, file: null });
    expect(await fs.readFile(target)).toEqual(theirs);
  });
});

describe("directories kvkeep creates are durable", () => {
  it("creating <root>/<key>/<model> fsyncs the root and the key directory that hold the new entries", async () => {
    const root = tempDir();
    const synced: string[] = [];
    await mkdirUnderRoot({ fsyncDir: async (d) => void synced.push(d) }, root, "key", "model");
    expect(synced).toEqual([root, path.join(root, "key")]);
    synced.length = 0;
    await mkdirUnderRoot({ fsyncDir: async (d) => void synced.push(d) }, root, "key", "model");
    expect(synced).toEqual([]); // nothing new, nothing to sync
    await mkdirUnderRoot({ fsyncDir: async (d) => void synced.push(d) }, root, "key", "other");
    expect(synced).toEqual([path.join(root, "key")]);
  });
});

describe("auto-mode conversations keep one id across turns", () => {
  it("turn events of one auto conversation share a conversation id, and its warmer keeps a single timer", async () => {
    const store = openKvCacheStore({ root: tempDir() });
    const timers = fakeTimers();
    const warmer = createStoreWarmer(store, { timers, warm: async () => ({ inputTokens: 1, cacheReadTokens: 1, outputTokens: 0, cacheWriteTokens: 0 }) });
    const ids = new Set<string>();
    store.onTurnEvent((e: TurnEvent) => ids.add(e.conversationId));
    const session = store.createSession("m");
    let history = [{ role: "system", content: "s" }, { role: "user", content: "q0" }];
    for (let i = 0; i < 3; i++) {
      const turn = await session.beginTurn({ kind: "auto", configHash, history, primeIfMissing: countingPrime() });
      await writeState(turn.savePath);
      const reply = { role: "assistant", content: `a${i}` };
      await session.commitTurn(turn, { kind: "autoRename", targetCachePath: session.autoCachePath(configHash, [...history, reply]), messageCount: history.length + 1 });
      history = [...history, reply, { role: "user", content: `q${i + 1}` }];
    }
    const [id] = [...ids];
    expect(ids.size).toBe(1);
    expect(id).toMatch(/^conv-[0-9a-f]{16}$/);
    await warmer.ready();
    expect(timers.pending()).toHaveLength(1);
    warmer.dispose();
  });
});
