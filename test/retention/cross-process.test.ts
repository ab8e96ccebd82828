/**
 * Retention with real child processes on the same root: a cache a child's turn holds is
 * never evicted (its OS lock is what the sweep respects), and what a child commits reaches
 * this store's index through the shared log, without a walk of the root.
 */
import path from "node:path";
import { beforeAll, describe, expect, it } from "vitest";
import { bundleFixture, runChild } from "../helpers/child.js";
import { tempDir } from "../helpers/temp-root.js";
import { commitAuto, exists, MODEL, openStore, recordingLogger } from "./helpers.js";

const noNative = process.env.KVKEEP_NO_NATIVE === "1";
if (noNative) {
  console.warn(
    "SKIPPED the retention test with a turn held by a child process: KVKEEP_NO_NATIVE=1 selects the JS fallback, whose locks do not exclude other processes",
  );
}
let worker: string;

beforeAll(async () => {
  worker = await bundleFixture("test/retention/fixtures/retention-worker.ts");
});

const keyOf = (cachePath: string): string => path.basename(path.dirname(path.dirname(cachePath)));

describe("retention across processes", () => {
  it.skipIf(noNative)("a cache held by a turn in a child process survives a sweep; once the child dies, the next sweep evicts it", async () => {
    const root = tempDir();
    const logger = recordingLogger();
    const store = openStore(root, { logger });
    const session = store.createSession(MODEL);
    const mine = [await commitAuto(session, "p1"), await commitAuto(session, "p2")];
    const holder = runChild(worker, [root, "hold-auto", "held"]);
    try {
      const line = await holder.waitForLine((l) => l.startsWith("holding "));
      const held = line.slice("holding ".length);

      const result = await store.sweep({ maxBytes: 0 });
      expect(result.evicted.map((e) => e.cacheKey).sort()).toEqual(mine.map(keyOf).sort());
      expect(result.keptBytes).toBe(1500); // the child's cache, known from its log record, kept
      expect(await exists(held)).toBe(true);
      // It was a candidate, tried and skipped because its lock is held — not merely unknown.
      expect(logger.lines.some((l) => l.line.startsWith("kvkeep: retention kept a cache in use") && l.line.includes(held))).toBe(true);
      expect(holder.child.exitCode).toBeNull(); // still holding during the sweep

      holder.child.kill("SIGKILL");
      expect(await holder.exited).toBe("SIGKILL");
      const after = await store.sweep({ maxBytes: 0 });
      expect(after.evicted).toEqual([{ scopeId: null, cacheKey: keyOf(held), modelId: MODEL, configHash: expect.any(String), bytes: 1500, reason: "budget" }]);
      expect(await exists(held)).toBe(false);
    } finally {
      holder.child.kill("SIGKILL");
      await store.close();
    }
  }, 60_000);

  it("caches a child process commits reach this store's usage() and sweep through the shared log, without a rescan", async () => {
    const root = tempDir();
    const store = openStore(root);
    await store.ready;
    const child = runChild(worker, [root, "commit-auto", "4", "2048"]);
    expect(await child.exited, child.stderr()).toBe(0);

    expect(await store.usage()).toEqual({ bytes: 4 * 2048, count: 4, autoBytes: 4 * 2048, namedBytes: 0, logicalBytes: 4 * 2048, sharing: 1, chunkCount: 0, chunkBytes: 0, staleTempBytes: 0 });
    expect(store.retention.stats.resyncs).toBe(0); // learnt from the log, not from a walk of the root
    const result = await store.sweep({ maxBytes: 2048 });
    expect(result.evicted).toHaveLength(3);
    expect(result.keptBytes).toBe(2048);
    expect(store.retention.stats.resyncs).toBe(0);
    await store.close();
  }, 60_000);
});
