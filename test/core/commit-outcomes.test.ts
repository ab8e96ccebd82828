/**
 * Commit outcomes and rollback defaults (issue 12, "Defaults that lose work"):
 * - `commitTurn` resolves `{ committed: false, reason, error }` and logs a warning for every
 *   outcome that rolled back cleanly, and rejects only for a bad result;
 * - `openKvCacheStore` sessions keep the last committed state when a turn is cancelled;
 *   the seed's `createKvCacheSession` keeps the three-layer clear; a session may override.
 */
import { existsSync, promises as fs } from "node:fs";
import { beforeEach, describe, expect, it } from "vitest";
import {
  __kvCacheSessionTestHooks as hooks,
  createKvCacheSession,
  generateConfigHash,
  type Logger,
  openKvCacheStore,
} from "../../src/index.js";
import { countingPrime, customTurn, writeState } from "../helpers/fake-engine.js";
import { tempDir } from "../helpers/temp-root.js";

const configHash = generateConfigHash("sys");

function recordingLogger(): Logger & { warnings: string[] } {
  const warnings: string[] = [];
  return { debug: () => {}, info: () => {}, warn: (m: string) => void warnings.push(m), error: () => {}, warnings };
}

describe("commitTurn resolves for every clean rollback", () => {
  it("a turn that saved nothing resolves { committed: false, reason: 'save-missing' } with a warning, and keeps the last committed state by default", async () => {
    const logger = recordingLogger();
    const store = openKvCacheStore({ root: tempDir(), logger });
    const session = store.createSession("m");
    const committed = await customTurn(session, "c", configHash, 3);
    const bytes = await fs.readFile(committed.cachePath);
    const turn = await session.beginTurn({ kind: "custom", customKey: "c", configHash, primeIfMissing: countingPrime() });
    const outcome = await session.commitTurn(turn, { kind: "static", messageCount: 5 });
    expect(outcome).toMatchObject({ committed: false, reason: "save-missing", error: { code: "SAVE_MISSING" }, keptCommitted: true });
    expect(logger.warnings.some((w) => w.includes("commit failed") && w.includes("SAVE_MISSING"))).toBe(true);
    expect(await fs.readFile(committed.cachePath)).toEqual(bytes);
    const next = await session.beginTurn({ kind: "custom", customKey: "c", configHash, primeIfMissing: countingPrime() });
    expect(next).toMatchObject({ primed: false, savedCount: 3 });
    await session.rollback(next);
    await store.close();
  });

  it("an empty save resolves with reason 'save-empty'", async () => {
    const store = openKvCacheStore({ root: tempDir() });
    const session = store.createSession("m");
    const turn = await session.beginTurn({ kind: "custom", customKey: "c", configHash, primeIfMissing: countingPrime() });
    await fs.writeFile(turn.savePath, "");
    expect(await session.commitTurn(turn, { kind: "static", messageCount: 2 })).toMatchObject({ committed: false, reason: "save-empty" });
    expect(existsSync(turn.savePath)).toBe(false);
    await store.close();
  });

  it("rejects only for a bad result, and the turn stays open for a correct commit", async () => {
    const store = openKvCacheStore({ root: tempDir() });
    const session = store.createSession("m");
    const turn = await session.beginTurn({ kind: "custom", customKey: "c", configHash, primeIfMissing: countingPrime() });
    await expect(session.commitTurn(turn, null as never)).rejects.toMatchObject({ code: "INVALID_ARGUMENT", argument: "result" });
    await writeState(turn.savePath);
    expect(await session.commitTurn(turn, { kind: "static", messageCount: 2 })).toMatchObject({ committed: true });
    await store.close();
  });
});

describe("what a cancelled turn (rollback) keeps", () => {
  it("openKvCacheStore sessions keep the last committed state by default: the next turn resumes, not re-primes", async () => {
    const store = openKvCacheStore({ root: tempDir() });
    const session = store.createSession("m");
    const committed = await customTurn(session, "c", configHash, 4);
    const turn = await session.beginTurn({ kind: "custom", customKey: "c", configHash, primeIfMissing: countingPrime() });
    await writeState(turn.savePath); // the engine saved, then the user pressed Stop
    await session.rollback(turn);
    expect(existsSync(turn.savePath)).toBe(false);
    const prime = countingPrime();
    const next = await session.beginTurn({ kind: "custom", customKey: "c", configHash, primeIfMissing: prime });
    expect(prime.calls).toEqual([]);
    expect(next).toMatchObject({ cachePath: committed.cachePath, savedCount: 4, primed: false });
    await session.rollback(next);
    await store.close();
  });

  it("a session can ask for the seed's clear on a store that keeps, and the reverse", async () => {
    const keeping = openKvCacheStore({ root: tempDir() });
    const clearing = keeping.createSession("m", { onRollback: "clear" });
    await customTurn(clearing, "c", configHash, 2);
    const t1 = await clearing.beginTurn({ kind: "custom", customKey: "c", configHash, primeIfMissing: countingPrime() });
    await clearing.rollback(t1);
    expect(existsSync(t1.cachePath)).toBe(false);

    const cleared = openKvCacheStore({ root: tempDir(), onRollback: "clear" });
    const keeper = cleared.createSession("m", { onRollback: "keep-committed" });
    await customTurn(keeper, "c", configHash, 2);
    const t2 = await keeper.beginTurn({ kind: "custom", customKey: "c", configHash, primeIfMissing: countingPrime() });
    await keeper.rollback(t2);
    expect(existsSync(t2.cachePath)).toBe(true);
    expect(() => keeping.createSession("m", { onRollback: "sometimes" as never })).toThrow(
      expect.objectContaining({ code: "INVALID_ARGUMENT", argument: "onRollback" }),
    );
    await keeping.close();
    await cleared.close();
  });

  describe("the seed's createKvCacheSession on the default store", () => {
    beforeEach(() => {
      process.env.KVKEEP_DIR = tempDir();
      hooks.resetForTest();
    });

    it("clears all three layers on rollback, as the seed contract says", async () => {
      const session = createKvCacheSession("m");
      const committed = await customTurn(session, "c", configHash, 2);
      const turn = await session.beginTurn({ kind: "custom", customKey: "c", configHash, primeIfMissing: countingPrime() });
      await session.rollback(turn);
      expect(existsSync(committed.cachePath)).toBe(false);
      expect(hooks.getSavedCount(committed.cachePath)).toBeUndefined();
      expect(hooks.hasInitializedKey("m", configHash, "c")).toBe(false);
    });

    it("keeps the committed state when the session asks for it", async () => {
      const session = createKvCacheSession("m", { onRollback: "keep-committed" });
      const committed = await customTurn(session, "c", configHash, 2);
      const turn = await session.beginTurn({ kind: "custom", customKey: "c", configHash, primeIfMissing: countingPrime() });
      await session.rollback(turn);
      expect(existsSync(committed.cachePath)).toBe(true);
      expect(hooks.getSavedCount(committed.cachePath)).toBe(2);
    });
  });
});
