/**
 * A failure at any step of a commit keeps the last committed state or the new one — never
 * neither (issue 11, item 1). ENOSPC and EIO are injected after *every* step a commit
 * reaches (the named steps of src/durable/crash-points.ts, each occurrence in turn), for a
 * commit that replaces a state, an auto commit to a fresh target, and a prime, under both
 * rollback policies. After each fault: `commitTurn` resolved (it never rejects for I/O), the
 * outcome says which state is the cache, and that state is what the same store and a
 * restarted, checksum-verifying store hand out — with its own count. No temp file is left.
 *
 * The real-disk version of the same (a tmpfs filled at each step) is in disk-full.test.ts.
 */
import { promises as fs } from "node:fs";
import { afterEach, beforeAll, describe, expect, it } from "vitest";
import { type CrashPoint, setCrashPointHookForTest } from "../../src/durable/crash-points.js";
import { type CommitOutcome, generateConfigHash } from "../../src/index.js";
import { KvCacheStoreImpl } from "../../src/facade/kvkeep-store.js";
import { countingPrime, customTurn, listTree, writeState } from "../helpers/fake-engine.js";
import { tempDir } from "../helpers/temp-root.js";

const configHash = generateConfigHash("sys");
const POLICIES = ["keep-committed", "clear"] as const;
const ERRNOS = ["ENOSPC", "EIO"] as const;

afterEach(() => setCrashPointHookForTest(null));

function injected(errno: string): Error {
  return Object.assign(new Error(`${errno}: injected fault`), { code: errno });
}

/** Run `work` with a hook that records every step it reaches; returns the steps in order. */
async function stepsOf(work: () => Promise<unknown>): Promise<CrashPoint[]> {
  const steps: CrashPoint[] = [];
  setCrashPointHookForTest((step) => void steps.push(step));
  try {
    await work();
  } finally {
    setCrashPointHookForTest(null);
  }
  return steps;
}

/** Run `work` with a fault raised at the `index`-th step it reaches (0-based). */
async function withFaultAt<T>(index: number, errno: string, work: () => Promise<T>): Promise<{ result: T; step: CrashPoint | null }> {
  let seen = 0;
  let step: CrashPoint | null = null;
  setCrashPointHookForTest((s) => {
    if (seen++ === index) {
      step = s;
      throw injected(errno);
    }
  });
  try {
    return { result: await work(), step };
  } finally {
    setCrashPointHookForTest(null);
  }
}

async function tempsUnder(root: string): Promise<string[]> {
  return (await listTree(root)).filter((f) => f.endsWith(".tmp"));
}

/** The trusted cache at `cachePath` as a store hands it out (bytes and count), or null: never primes or clears. */
async function trusted(store: KvCacheStoreImpl, cachePath: string): Promise<{ bytes: Buffer; count: number } | null> {
  return store.useCache(cachePath, {}, async (cache) => ({ bytes: await fs.readFile(cache.cachePath), count: cache.messageCount }));
}

function expectCleanFailure(outcome: CommitOutcome, errno: string, context: string): void {
  expect(outcome, context).toMatchObject({ committed: false, reason: errno === "ENOSPC" ? "no-space" : "io-error", keptCommitted: true });
}

let replaceSteps: CrashPoint[] = [];
let autoSteps: CrashPoint[] = [];
let primeSteps: CrashPoint[] = [];

beforeAll(async () => {
  // The steps an unfaulted commit reaches, in order (each occurrence is one fault site).
  {
    const store = new KvCacheStoreImpl({ root: tempDir() });
    const session = store.createSession("m");
    await customTurn(session, "k", configHash, 2);
    const turn = await session.beginTurn({ kind: "custom", customKey: "k", configHash, primeIfMissing: countingPrime() });
    await writeState(turn.savePath);
    replaceSteps = await stepsOf(() => session.commitTurn(turn, { kind: "static", messageCount: 4 }));
    await store.close();
  }
  {
    const store = new KvCacheStoreImpl({ root: tempDir() });
    const session = store.createSession("m");
    const history = [{ role: "user", content: "q" }];
    const turn = await session.beginTurn({ kind: "auto", configHash, history, primeIfMissing: countingPrime() });
    await writeState(turn.savePath);
    const targetCachePath = session.autoCachePath(configHash, [...history, { role: "assistant", content: "a" }]);
    autoSteps = await stepsOf(() => session.commitTurn(turn, { kind: "autoRename", targetCachePath, messageCount: 2 }));
    await store.close();
  }
  {
    const store = new KvCacheStoreImpl({ root: tempDir() });
    const session = store.createSession("m");
    primeSteps = await stepsOf(async () => {
      const turn = await session.beginTurn({ kind: "custom", customKey: "p", configHash, primeIfMissing: countingPrime() });
      await session.rollback(turn);
    });
    await store.close();
  }
});

describe("faults injected after every step of a commit", () => {
  it("the protocol's steps are all reached (the fault sites below are the real ones)", () => {
    expect(replaceSteps).toEqual([
      "install:after-fsync-state",
      "atomic-write:after-temp-synced",
      "atomic-write:after-rename",
      "install:after-pending-manifest",
      "install:after-rename",
      "install:after-rename-synced",
      "atomic-write:after-temp-synced",
      "atomic-write:after-rename",
      "install:after-final-manifest",
    ]);
    expect(autoSteps).toEqual([
      "install:after-fsync-state",
      "atomic-write:after-temp-synced",
      "install:after-rename",
      "atomic-write:after-rename",
      "install:after-final-manifest",
      "auto:after-target-installed",
      "auto:after-source-removed",
    ]);
    expect(primeSteps.slice(0, 5)).toEqual(autoSteps.slice(0, 5));
  });

  for (const policy of POLICIES) {
    for (const errno of ERRNOS) {
      it(`replacing a committed state (${policy}, ${errno}): the cache is the previous state or the new one, with its count, in this store and after a restart`, async () => {
        for (let index = 0; index < replaceSteps.length; index++) {
          const root = tempDir();
          const store = new KvCacheStoreImpl({ root, onRollback: policy });
          const session = store.createSession("m");
          const previous = await customTurn(session, "k", configHash, 2);
          const previousBytes = await fs.readFile(previous.cachePath);
          const turn = await session.beginTurn({ kind: "custom", customKey: "k", configHash, primeIfMissing: countingPrime() });
          const newBytes = await writeState(turn.savePath, 5000);
          const { result: outcome, step } = await withFaultAt(index, errno, () =>
            session.commitTurn(turn, { kind: "static", messageCount: 4 }),
          );
          const context = `${policy} ${errno} at #${index} ${step}`;
          expect(step, context).toBe(replaceSteps[index]);
          // Up to the rename the previous state is the cache; from the rename on, the new one.
          const renamed = replaceSteps.indexOf("install:after-rename");
          let expected: { bytes: Buffer; count: number };
          if (index < renamed) {
            expectCleanFailure(outcome, errno, context);
            expected = { bytes: previousBytes, count: 2 };
          } else {
            expect(outcome, context).toMatchObject({ committed: true, messageCount: 4 });
            expected = { bytes: newBytes, count: 4 };
          }
          expect(await tempsUnder(root), context).toEqual([]);
          expect(await trusted(store, turn.cachePath), context).toEqual(expected);
          await store.close();
          const restarted = new KvCacheStoreImpl({ root, verify: "checksum" });
          expect(await trusted(restarted, turn.cachePath), `${context}, restarted`).toEqual(expected);
          await restarted.close();
        }
      });

      it(`an auto commit to a fresh target (${policy}, ${errno}): the source state stays, or the target holds the new one`, async () => {
        const history = [{ role: "user", content: "q" }];
        const reply = { role: "assistant", content: "a" };
        for (let index = 0; index < autoSteps.length; index++) {
          const root = tempDir();
          const store = new KvCacheStoreImpl({ root, onRollback: policy });
          const session = store.createSession("m");
          const turn = await session.beginTurn({ kind: "auto", configHash, history, primeIfMissing: countingPrime() });
          const sourceBytes = await fs.readFile(turn.cachePath);
          const newBytes = await writeState(turn.savePath, 5000);
          const targetCachePath = session.autoCachePath(configHash, [...history, reply]);
          const { result: outcome, step } = await withFaultAt(index, errno, () =>
            session.commitTurn(turn, { kind: "autoRename", targetCachePath, messageCount: 2 }),
          );
          const context = `${policy} ${errno} at #${index} ${step}`;
          const renamed = autoSteps.indexOf("install:after-rename");
          const manifestRenamed = autoSteps.indexOf("atomic-write:after-rename");
          expect(await tempsUnder(root), context).toEqual([]);
          for (const reader of [store, null]) {
            const readerStore = reader ?? new KvCacheStoreImpl({ root, verify: "checksum" });
            const label = reader ? context : `${context}, restarted`;
            // Until the target's manifest is in place the source is the cache; from then on, the target.
            if (index < manifestRenamed) {
              expect(outcome, label).toMatchObject({ committed: false, keptCommitted: true });
              expect(await trusted(readerStore, targetCachePath), label).toBeNull();
              expect(await trusted(readerStore, turn.cachePath), label).toEqual({ bytes: sourceBytes, count: 0 });
            } else {
              expect(outcome, label).toMatchObject({ committed: true, cachePath: targetCachePath, keptExisting: false });
              expect(await trusted(readerStore, targetCachePath), label).toEqual({ bytes: newBytes, count: 2 });
            }
            await readerStore.close();
          }
          expect(renamed).toBeLessThan(manifestRenamed);
        }
      });
    }
  }

  for (const errno of ERRNOS) {
    it(`a prime that fails (${errno}) leaves no half-installed cache: the next turn primes cleanly`, async () => {
      for (let index = 0; index < primeSteps.length; index++) {
        const root = tempDir();
        const store = new KvCacheStoreImpl({ root });
        const session = store.createSession("m");
        const { result, step } = await withFaultAt(index, errno, () =>
          session
            .beginTurn({ kind: "custom", customKey: "p", configHash, primeIfMissing: countingPrime() })
            .then((turn) => session.rollback(turn).then(() => "began" as const))
            .catch((error: unknown) => error),
        );
        const context = `${errno} at #${index} ${step}`;
        if (result !== "began") expect(result, context).toMatchObject({ code: errno === "ENOSPC" ? "NO_SPACE" : "IO_ERROR" });
        expect(await tempsUnder(root), context).toEqual([]);
        const prime = countingPrime();
        const again = await session.beginTurn({ kind: "custom", customKey: "p", configHash, primeIfMissing: prime });
        // Primed again unless the failed one had fully installed (a fault after both renames).
        expect(again.primed || result === "began", context).toBe(true);
        await session.rollback(again);
        await store.close();
      }
    });
  }
});
