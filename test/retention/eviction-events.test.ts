/**
 * `store.onEviction`: each cache this store's sweeps evict — manual and background sweeps
 * alike — reaches its listeners once, right after its files are gone; evictions made by
 * another store or process on the root do not. Real files, real sweeps, a real child process.
 */
import path from "node:path";
import { Registry } from "prom-client";
import { beforeAll, describe, expect, it } from "vitest";
import type { EvictedCache } from "../../src/index.js";
import { createKvKeepMetrics } from "../../src/metrics/index.js";
import { parsePrometheus } from "../server/helpers.js";
import { bundleFixture, runChild } from "../helpers/child.js";
import { tempDir } from "../helpers/temp-root.js";
import { backdate, commitAuto, commitNamed, exists, MODEL, openStore, recordingLogger } from "./helpers.js";

const byKey = (a: EvictedCache, b: EvictedCache): number => a.cacheKey.localeCompare(b.cacheKey);

const HOUR = 60 * 60 * 1000;

/** A root holding one committed auto cache of 500 bytes, last used 2 h ago (as the next store reads it from disk). */
async function rootWithIdleCache(): Promise<{ root: string; stale: string }> {
  const root = tempDir();
  const first = openStore(root);
  const stale = await commitAuto(first.createSession(MODEL), "stale", 500);
  await first.close();
  await backdate(stale, 2 * HOUR);
  return { root, stale };
}

let worker: string;
beforeAll(async () => {
  worker = await bundleFixture("test/retention/fixtures/retention-worker.ts");
});

describe("store.onEviction", () => {
  it("hears every eviction of a manual sweep, exactly what the sweep returns, before it resolves", async () => {
    const store = openStore(tempDir());
    const session = store.createSession(MODEL);
    const heard: EvictedCache[] = [];
    store.onEviction((evicted) => heard.push(evicted));
    for (let i = 0; i < 6; i++) await commitAuto(session, `m${i}`, 1000);
    await store.retention.whenIdle(); // the first commit's background sweep (nothing over the default budget)
    expect(heard).toEqual([]);

    const result = await store.sweep({ maxBytes: 2500 });
    expect(result.evicted).toHaveLength(4);
    expect([...heard].sort(byKey)).toEqual([...result.evicted].sort(byKey));
    expect(heard.every((e) => e.reason === "budget" && e.bytes === 1000 && e.modelId === MODEL)).toBe(true);
    await store.close();
  });

  it("hears the background sweeps that commits start, idle and budget evictions alike", async () => {
    const { root, stale } = await rootWithIdleCache();
    const store = openStore(root, { maxBytes: 2500, maxIdleMs: HOUR, sweepIntervalMs: 0 });
    const heard: EvictedCache[] = [];
    store.onEviction((evicted) => heard.push(evicted));
    const session = store.createSession(MODEL);
    const fresh: string[] = [];
    for (let i = 0; i < 4; i++) {
      fresh.push(await commitAuto(session, `b${i}`, 1000)); // each commit starts a sweep in the background
      await store.retention.whenIdle();
    }
    expect(heard.filter((e) => e.reason === "idle").map((e) => e.bytes)).toEqual([500]);
    expect(await exists(stale)).toBe(false);
    // 4 × 1000 bytes against 2500: the sweeps after the third and fourth commits evict one each.
    const budget = heard.filter((e) => e.reason === "budget");
    expect(budget).toHaveLength(2);
    const evictedPaths = fresh.filter((cachePath) => budget.some((e) => cachePath.includes(`${path.sep}${e.cacheKey}${path.sep}`)));
    expect(await Promise.all(evictedPaths.map(exists))).toEqual([false, false]);
    expect((await store.usage()).autoBytes).toBe(2000);
    await store.close();
  });

  it("does not report what another process's sweep evicts on the same root", async () => {
    const root = tempDir();
    const store = openStore(root);
    const session = store.createSession(MODEL);
    const heard: EvictedCache[] = [];
    store.onEviction((evicted) => heard.push(evicted));
    const paths = [await commitAuto(session, "x"), await commitAuto(session, "y")];
    await store.retention.whenIdle();
    await store.retention.log.flushed(); // the child learns of the caches through the shared log

    const child = runChild(worker, [root, "sweep", "0"]);
    expect(await child.exited, child.stderr()).toBe(0);
    expect(child.stdout()).toContain("evicted 2");
    expect(await Promise.all(paths.map(exists))).toEqual([false, false]);
    const mine = await store.sweep({ maxBytes: 0 }); // nothing left for this store to evict
    expect(mine.evicted).toEqual([]);
    expect(heard).toEqual([]);
    await store.close();
  }, 60_000);

  it("stops after unsubscribing; a listener that throws is logged and the sweep still evicts", async () => {
    const logger = recordingLogger();
    const store = openStore(tempDir(), { logger, evictNamed: true });
    const session = store.createSession(MODEL);
    const heard: string[] = [];
    const unsubscribe = store.onEviction((e) => heard.push(e.cacheKey));
    store.onEviction(() => {
      throw new Error("listener bug");
    });
    const first = await commitNamed(session, "first");
    await store.retention.whenIdle();
    expect((await store.sweep({ maxBytes: 0 })).evicted).toHaveLength(1);
    expect(heard).toEqual(["first"]);
    expect(await exists(first)).toBe(false);
    expect(logger.lines.some((l) => l.level === "warn" && l.line.includes("eviction listener threw") && l.line.includes("listener bug"))).toBe(true);

    unsubscribe();
    await commitNamed(session, "second");
    await store.retention.whenIdle();
    expect((await store.sweep({ maxBytes: 0 })).evicted).toHaveLength(1);
    expect(heard).toEqual(["first"]);
    expect(() => store.onEviction("nope" as never)).toThrow(expect.objectContaining({ code: "INVALID_ARGUMENT" }));
    await store.close();
  });
});

describe("kvkeep/metrics subscribed to a store", () => {
  it("counts each eviction of background and manual sweeps once, by reason; observeSweep adds nothing more", async () => {
    const { root } = await rootWithIdleCache();
    const store = openStore(root, { maxBytes: 1500, maxIdleMs: HOUR, sweepIntervalMs: 0 });
    const registry = new Registry();
    const metrics = createKvKeepMetrics({ registry, store });
    const evictions = async (reason: string): Promise<number> =>
      parsePrometheus(await registry.metrics()).get(`kvkeep_evictions_total{reason="${reason}"}`)!;
    const session = store.createSession(MODEL);
    for (let i = 0; i < 3; i++) {
      await commitAuto(session, `c${i}`, 1000); // background sweeps: the idle cache, then one over budget after each later commit
      await store.retention.whenIdle();
    }
    expect(await evictions("idle")).toBe(1);
    expect(await evictions("budget")).toBe(2);

    const manual = await store.sweep({ maxBytes: 0 });
    expect(manual.evicted).toHaveLength(1);
    metrics.observeSweep(manual); // a handler that still reports its sweeps: not counted twice
    expect(await evictions("budget")).toBe(3);
    expect(parsePrometheus(await registry.metrics()).get('kvkeep_store_bytes{kind="auto"}')).toBe(0);
    await store.close();
  });
});
