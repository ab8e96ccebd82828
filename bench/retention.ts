/**
 * Retention at scale, from one run: for roots of 1 000, 10 000 and 100 000 small caches
 * (1–4 KiB, fabricated directly as `.bin` + a valid manifest, last uses spread over 12 h):
 * - open: time until `store.ready` (recovery and the index build: one walk of the root);
 * - sweep with nothing to evict (median of 5) and a sweep evicting 1% (median of 3);
 * - commit latency: median of 50 real auto-mode turns through a session, interleaved
 *   across the three roots in a random order each round so machine noise hits them alike
 *   (`commitTurn` alone, and the whole turn begin+commit).
 * Goals (issue 7): a sweep over 10 000 caches ≤ 50 ms; commit latency flat (≤ 1.2× from
 * 1 000 to 100 000).          npx tsx bench/retention.ts     (BENCH_CACHES=1000,10000 to shorten)
 */
import { writeRootMarker } from "../src/durable/root-marker.js";
import { execFileSync } from "node:child_process";
import { randomBytes } from "node:crypto";
import { mkdtempSync, promises as fs, rmSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import xxhash from "xxhash-wasm";
import { generateConfigHash } from "../src/index.js";
import { cachePathOf, lockPathOf, manifestPathOf } from "../src/layout/paths.js";
import { MANIFEST_FORMAT, serializeManifest } from "../src/manifest/format.js";
import { KvCacheStoreImpl } from "../src/facade/kvkeep-store.js";
import { median, nowMs, table } from "./lib.js";

const counts = (process.env.BENCH_CACHES ?? "1000,10000,100000").split(",").map(Number);
const COMMITS = Number(process.env.BENCH_COMMITS ?? 50);
const MODEL = "bench-model";
const configHash = generateConfigHash("bench-retention");
const dir = mkdtempSync(path.join(os.tmpdir(), "kvkeep-bench-retention-"));
const { h64Raw } = await xxhash();
const pool = randomBytes(4096 + 1024);

async function inParallel(n: number, concurrency: number, work: (i: number) => Promise<void>): Promise<void> {
  let next = 0;
  await Promise.all(
    Array.from({ length: concurrency }, async () => {
      for (let i = next++; i < n; i = next++) await work(i);
    }),
  );
}

/**
 * N auto caches written directly: bin, its manifest (identity, XXH64), and the empty lock
 * file a real commit leaves beside its cache; last uses spread over the past 12 h.
 */
async function fabricate(root: string, n: number): Promise<number> {
  writeRootMarker(root); // a root kvkeep made (a store refuses a foreign directory)
  let bytes = 0;
  const now = Date.now();
  await inParallel(n, 64, async (i) => {
    const cacheKey = `auto-${i.toString(16).padStart(16, "0")}`;
    const cachePath = cachePathOf(root, { scopeId: null, cacheKey, modelId: MODEL, configHash });
    await fs.mkdir(path.dirname(cachePath), { recursive: true });
    const size = 1024 + ((i * 2654435761) % 3073);
    const data = pool.subarray(i % 1024, (i % 1024) + size);
    await fs.writeFile(cachePath, data);
    const st = await fs.stat(cachePath, { bigint: true });
    const manifest = serializeManifest({
      format: MANIFEST_FORMAT,
      kind: "auto",
      modelId: MODEL,
      fingerprint: null,
      configHash,
      cacheKey,
      current: {
        size,
        ino: st.ino.toString(),
        mtimeNs: st.mtimeNs.toString(),
        xxh64: h64Raw(data).toString(16).padStart(16, "0"),
        messageCount: 2,
        tokenCount: null,
        committedAt: now,
      },
      pending: null,
    });
    await fs.writeFile(manifestPathOf(cachePath), manifest);
    await fs.writeFile(lockPathOf(cachePath), "");
    const lastUse = (now - Math.random() * 12 * 3600 * 1000) / 1000;
    await fs.utimes(manifestPathOf(cachePath), lastUse, lastUse);
    bytes += size;
  });
  return bytes;
}

interface Conversation {
  store: KvCacheStoreImpl;
  history: Array<{ role: string; content: string }>;
}

/** One auto-mode turn that continues the conversation: begin (loads the last state), save, commit. */
async function turn(conv: Conversation, state: Buffer): Promise<{ commit: number; whole: number }> {
  const session = conv.store.createSession(MODEL);
  const t0 = nowMs();
  const handle = await session.beginTurn({
    kind: "auto",
    configHash,
    history: conv.history,
    primeIfMissing: (p) => fs.writeFile(p, state.subarray(0, 512)),
  });
  await fs.writeFile(handle.savePath, state); // what the engine's save does
  const reply = { role: "assistant", content: `reply ${conv.history.length}` };
  const targetCachePath = session.autoCachePath(configHash, [...conv.history, reply]);
  const t1 = nowMs();
  await session.commitTurn(handle, { kind: "autoRename", targetCachePath, messageCount: conv.history.length + 1 });
  const t2 = nowMs();
  conv.history.push(reply, { role: "user", content: `question ${conv.history.length + 2}` });
  return { commit: t2 - t1, whole: t2 - t0 };
}

const rows: Array<Record<string, string | number>> = [];
try {
  const stores = new Map<number, KvCacheStoreImpl>();
  const fabricated = new Map<number, { ms: number; bytes: number }>();
  const opened = new Map<number, number>();
  for (const n of counts) {
    const root = path.join(dir, `root-${n}`);
    let t = nowMs();
    const bytes = await fabricate(root, n);
    fabricated.set(n, { ms: nowMs() - t, bytes });
    console.log(`fabricated ${n} caches (${(bytes / 1024 / 1024).toFixed(1)} MiB) in ${((nowMs() - t) / 1000).toFixed(1)} s`);
    t = nowMs();
    const store = new KvCacheStoreImpl({ root, onRollback: "keep-committed" });
    await store.ready;
    opened.set(n, nowMs() - t);
    const usage = await store.usage();
    if (usage.count !== n) throw new Error(`index of root-${n} has ${usage.count} caches`);
    stores.set(n, store);
  }
  // Let the fabrication's writeback finish first (real caches were written long before a
  // sweep), so it does not land on the measurements below.
  try {
    execFileSync("sync");
  } catch {
    // no sync(1): measure anyway
  }
  const backend = stores.values().next().value?.backend;
  console.log(`kvkeep retention benchmark — backend ${backend}, ${os.cpus().length} cores`);

  // Sweeps with nothing to evict (default limits: 4 GiB, 24 h; every cache was used in the last 12 h).
  // Interleaved across sizes, like the commits, after one warm-up sweep each.
  const quietSamples = new Map<number, number[]>(counts.map((n) => [n, []]));
  for (const n of counts) await stores.get(n)!.sweep();
  for (let i = 0; i < 5; i++) {
    for (const n of counts) {
      const t = nowMs();
      const result = await stores.get(n)!.sweep();
      quietSamples.get(n)!.push(nowMs() - t);
      if (result.evicted.length) throw new Error("a quiet sweep evicted something");
    }
  }
  const quiet = new Map<number, number>(counts.map((n) => [n, median(quietSamples.get(n)!)]));

  // Commit latency, interleaved across roots. One conversation per root; the first turns
  // prime and trigger each store's first background sweep, which we let finish first.
  const state = randomBytes(4096);
  const convs = new Map<number, Conversation>(counts.map((n) => [n, { store: stores.get(n)!, history: [{ role: "user", content: "hello" }] }]));
  for (let warm = 0; warm < 3; warm++) for (const n of counts) await turn(convs.get(n)!, state);
  for (const n of counts) await stores.get(n)!.retention.whenIdle();
  const commitSamples = new Map<number, number[]>(counts.map((n) => [n, []]));
  const turnSamples = new Map<number, number[]>(counts.map((n) => [n, []]));
  for (let i = 0; i < COMMITS; i++) {
    // A fresh random order each round: whatever a commit leaves for the next one to pay
    // (journal flushes, the background log append) falls on every size alike.
    const order = [...counts].sort(() => Math.random() - 0.5);
    for (const n of order) {
      const r = await turn(convs.get(n)!, state);
      commitSamples.get(n)!.push(r.commit);
      turnSamples.get(n)!.push(r.whole);
    }
  }

  // Sweeps that evict 1% each (by bytes: the budget is lowered by 1% of the evictable bytes).
  const evicting = new Map<number, { ms: number; evicted: number }>();
  for (const n of counts) {
    const store = stores.get(n)!;
    const samples: number[] = [];
    let evicted = 0;
    const onePercent = Math.floor((await store.usage()).autoBytes / 100);
    for (let i = 0; i < 3; i++) {
      const budget = (await store.usage()).autoBytes - onePercent;
      const t = nowMs();
      const result = await store.sweep({ maxBytes: budget });
      samples.push(nowMs() - t);
      evicted += result.evicted.length;
      if (result.keptBytes > budget) throw new Error("the budget does not hold after a sweep");
    }
    evicting.set(n, { ms: median(samples), evicted: Math.round(evicted / 3) });
  }

  for (const n of counts) {
    rows.push({
      caches: n,
      "fabricate s": fabricated.get(n)!.ms / 1000,
      "open ms": opened.get(n)!,
      "sweep (none) ms": quiet.get(n)!,
      "sweep (1%) ms": evicting.get(n)!.ms,
      "evicted/sweep": evicting.get(n)!.evicted,
      "commit ms": median(commitSamples.get(n)!),
      "turn ms": median(turnSamples.get(n)!),
    });
  }
  for (const store of stores.values()) await store.close();
  console.log(table(rows));
  const first = counts[0]!;
  const last = counts[counts.length - 1]!;
  const commitRatio = median(commitSamples.get(last)!) / median(commitSamples.get(first)!);
  const turnRatio = median(turnSamples.get(last)!) / median(turnSamples.get(first)!);
  console.log(
    `commit latency ${last} vs ${first} caches: ${commitRatio.toFixed(2)}× (goal ≤ 1.20×); whole turn ${turnRatio.toFixed(2)}×`,
  );
  if (quiet.has(10_000)) {
    console.log(
      `sweep over 10 000 caches: ${quiet.get(10_000)!.toFixed(1)} ms with nothing to evict, ${evicting.get(10_000)!.ms.toFixed(1)} ms evicting 1% (goal ≤ 50 ms)`,
    );
  }
  console.log(`medians: quiet sweeps of 5, evicting sweeps of 3, ${COMMITS} commits per size (interleaved).`);
} finally {
  rmSync(dir, { recursive: true, force: true });
}
