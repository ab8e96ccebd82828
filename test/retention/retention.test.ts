/**
 * Retention on real files in temp roots: the disk budget, idle expiry, LRU order by *use*,
 * named caches, caches in use, the shared index log and its compaction, and when sweeps run.
 */
import { promises as fs } from "node:fs";
import path from "node:path";
import { describe, expect, it, vi } from "vitest";
import { openKvCacheStore } from "../../src/index.js";
import { INDEX_LOG_NAME, IndexLog } from "../../src/catalog/index-log.js";
import { tempDir } from "../helpers/temp-root.js";
import * as prefix from "../index/helpers.js";
import {
  backdate,
  commitAuto,
  commitNamed,
  configHash,
  exists,
  gate,
  MODEL,
  openAutoLoad,
  openStore,
  recordingLogger,
  sleep,
  useAuto,
} from "./helpers.js";

const keyOf = (cachePath: string): string => path.basename(path.dirname(path.dirname(cachePath)));

describe("budget and order", () => {
  it("a sweep brings the evictable caches within maxBytes (keptBytes ≤ maxBytes) and removes their files", async () => {
    const root = tempDir();
    const store = openStore(root);
    const session = store.createSession(MODEL);
    const paths: string[] = [];
    for (let i = 0; i < 10; i++) paths.push(await commitAuto(session, `c${i}`, 1000));
    expect(await store.usage()).toEqual({ bytes: 10_000, count: 10, autoBytes: 10_000, namedBytes: 0, logicalBytes: 10_000, sharing: 1, chunkCount: 0, chunkBytes: 0, staleTempBytes: 0 });

    const result = await store.sweep({ maxBytes: 3500 });
    expect(result.keptBytes).toBeLessThanOrEqual(3500);
    expect(result.keptBytes).toBe(3000);
    expect(result.evicted).toHaveLength(7);
    expect(result.evicted.every((e) => e.reason === "budget" && e.bytes === 1000 && e.modelId === MODEL)).toBe(true);
    const left = (await Promise.all(paths.map(exists))).filter(Boolean).length;
    expect(left).toBe(3);
    expect(await store.usage()).toMatchObject({ bytes: 3000, count: 3 });
    // Evicted caches leave no lock files or empty directories behind.
    const keyDirs = (await fs.readdir(root)).filter((d) => d !== ".kvkeep");
    expect(keyDirs).toHaveLength(3);
    await store.close();
  });

  it("the least recently used caches go first", async () => {
    const root = tempDir();
    const store = openStore(root);
    const session = store.createSession(MODEL);
    const paths: string[] = [];
    for (const tag of ["a", "b", "c", "d"]) {
      paths.push(await commitAuto(session, tag));
      await sleep(5);
    }
    const result = await store.sweep({ maxBytes: 2000 });
    expect(result.evicted.map((e) => e.cacheKey)).toEqual([keyOf(paths[0]!), keyOf(paths[1]!)]);
    expect(await exists(paths[2]!)).toBe(true);
    expect(await exists(paths[3]!)).toBe(true);
    await store.close();
  });

  it("a cache loaded by a turn counts as used: it survives a more recently committed cache nobody used", async () => {
    const root = tempDir();
    const store = openStore(root);
    const session = store.createSession(MODEL);
    const older = await commitAuto(session, "older");
    await sleep(5);
    const newer = await commitAuto(session, "newer");
    await sleep(5);
    await useAuto(session, "older"); // loaded, nothing committed
    const result = await store.sweep({ maxBytes: 1000 });
    expect(result.evicted.map((e) => e.cacheKey)).toEqual([keyOf(newer)]);
    expect(await exists(older)).toBe(true);
    await store.close();
  });

  it("a load's use time is kept on disk: a reopened store still ranks the loaded cache as recently used", async () => {
    const root = tempDir();
    const first = openStore(root);
    const session = first.createSession(MODEL);
    const older = await commitAuto(session, "older");
    await sleep(5);
    const newer = await commitAuto(session, "newer");
    await sleep(5);
    await useAuto(session, "older");
    await first.close();

    const reopened = openStore(root);
    const result = await reopened.sweep({ maxBytes: 1000 });
    expect(result.evicted.map((e) => e.cacheKey)).toEqual([keyOf(newer)]);
    expect(await exists(older)).toBe(true);
    await reopened.close();
  });
});

describe("idle expiry", () => {
  it("caches idle longer than maxIdleMs are evicted first (reason idle), even within the budget", async () => {
    const root = tempDir();
    const setup = openStore(root);
    const session = setup.createSession(MODEL);
    const stale = await commitAuto(session, "stale");
    const fresh = await commitAuto(session, "fresh");
    await setup.close();
    await backdate(stale, 2 * 60 * 60 * 1000); // last used two hours ago

    const store = openStore(root, { maxIdleMs: 60 * 60 * 1000 });
    const result = await store.sweep();
    expect(result.evicted).toEqual([{ scopeId: null, cacheKey: keyOf(stale), modelId: MODEL, configHash: expect.any(String), bytes: 1000, reason: "idle" }]);
    expect(result.keptBytes).toBe(1000);
    expect(await exists(fresh)).toBe(true);
    await store.close();
  });

  it("idle expiry measures real elapsed time since the last use (a short maxIdleMs override)", async () => {
    const root = tempDir();
    const store = openStore(root);
    const session = store.createSession(MODEL);
    const a = await commitAuto(session, "a");
    const b = await commitAuto(session, "b");
    await sleep(80);
    await useAuto(session, "b"); // b used just now: not idle
    const result = await store.sweep({ maxIdleMs: 60 });
    expect(result.evicted.map((e) => [e.cacheKey, e.reason])).toEqual([[keyOf(a), "idle"]]);
    expect(await exists(b)).toBe(true);
    await store.close();
  });

  it("idle victims come before budget victims, and budget eviction stops once the budget holds", async () => {
    const root = tempDir();
    const setup = openStore(root);
    const session = setup.createSession(MODEL);
    const paths: string[] = [];
    for (const tag of ["p", "q", "r", "s"]) {
      paths.push(await commitAuto(session, tag));
      await sleep(5);
    }
    await setup.close();
    await backdate(paths[3]!, 48 * 60 * 60 * 1000); // s is idle, though committed last
    const store = openStore(root);
    const result = await store.sweep({ maxBytes: 2000 });
    expect(result.evicted.map((e) => [e.cacheKey, e.reason])).toEqual([
      [keyOf(paths[3]!), "idle"],
      [keyOf(paths[0]!), "budget"],
    ]);
    expect(result.keptBytes).toBe(2000);
    await store.close();
  });
});

describe("named caches and usage", () => {
  it("named caches are kept unless evictNamed, and are not counted against maxBytes", async () => {
    const root = tempDir();
    const store = openStore(root);
    const session = store.createSession(MODEL);
    const named = await commitNamed(session, "my-chat", 3000);
    const auto = await commitAuto(session, "x", 1000);
    await backdate(named, 100 * 24 * 60 * 60 * 1000);
    const result = await store.sweep({ maxBytes: 0, maxIdleMs: 0 });
    expect(result.evicted.map((e) => e.cacheKey)).toEqual([keyOf(auto)]);
    expect(result.keptBytes).toBe(0);
    expect(await exists(named)).toBe(true);
    await store.close();

    const evictNamed = openStore(root, { evictNamed: true });
    const second = await evictNamed.sweep({ maxBytes: 0 });
    expect(second.evicted).toEqual([{ scopeId: null, cacheKey: "my-chat", modelId: MODEL, configHash: expect.any(String), bytes: 3000, reason: "idle" }]);
    expect(await exists(named)).toBe(false);
    expect(await evictNamed.usage()).toEqual({ bytes: 0, count: 0, autoBytes: 0, namedBytes: 0, logicalBytes: 0, sharing: 1, chunkCount: 0, chunkBytes: 0, staleTempBytes: 0 });
    await evictNamed.close();
  });

  it("usage() counts every cache on disk and splits auto from named bytes; it follows deletes and rollbacks", async () => {
    const root = tempDir();
    const store = openKvCacheStore({ root, onRollback: "clear" });
    const session = store.createSession(MODEL);
    await commitNamed(session, "n1", 2000);
    await commitNamed(session, "n2", 500);
    await commitAuto(session, "a1", 1200);
    expect(await store.usage()).toEqual({ bytes: 3700, count: 3, autoBytes: 1200, namedBytes: 2500, logicalBytes: 3700, sharing: 1, chunkCount: 0, chunkBytes: 0, staleTempBytes: 0 });

    await store.delete({ kvCacheKey: "n2" });
    expect(await store.usage()).toEqual({ bytes: 3200, count: 2, autoBytes: 1200, namedBytes: 2000, logicalBytes: 3200, sharing: 1, chunkCount: 0, chunkBytes: 0, staleTempBytes: 0 });

    const turn = await openAutoLoad(session, "a1");
    await session.rollback(turn); // "clear" removes the cache
    expect(await store.usage()).toEqual({ bytes: 2000, count: 1, autoBytes: 0, namedBytes: 2000, logicalBytes: 2000, sharing: 1, chunkCount: 0, chunkBytes: 0, staleTempBytes: 0 });

    // A reopened store builds the same picture from the disk.
    await store.close();
    const reopened = openKvCacheStore({ root });
    expect(await reopened.usage()).toEqual({ bytes: 2000, count: 1, autoBytes: 0, namedBytes: 2000, logicalBytes: 2000, sharing: 1, chunkCount: 0, chunkBytes: 0, staleTempBytes: 0 });
    await reopened.close();
  });
});

describe("caches in use", () => {
  it("a cache held by an open turn survives a sweep that would otherwise evict it, and goes once the turn ends", async () => {
    const root = tempDir();
    const store = openStore(root);
    const session = store.createSession(MODEL);
    const held = await commitAuto(session, "held");
    await sleep(5);
    const free = await commitAuto(session, "free");
    const turn = await openAutoLoad(session, "held");
    await backdate(held, 1000); // older than "free" on disk too: it would be the first victim

    const result = await store.sweep({ maxBytes: 0 });
    expect(result.evicted.map((e) => e.cacheKey)).toEqual([keyOf(free)]);
    expect(result.keptBytes).toBe(1000);
    expect(await exists(held)).toBe(true);

    await session.rollback(turn); // keep-committed: the cache stays, the turn ends
    const after = await store.sweep({ maxBytes: 0 });
    expect(after.evicted.map((e) => e.cacheKey)).toEqual([keyOf(held)]);
    await store.close();
  });

  it("a victim used after the sweep planned is re-checked under its lock and kept", async () => {
    const root = tempDir();
    const other = openStore(root);
    const otherSession = other.createSession(MODEL);
    const victim = await commitAuto(otherSession, "victim");
    await other.close();

    // A second store on the same root uses the cache between the sweep's plan and its eviction.
    const user = openStore(root);
    const userSession = user.createSession(MODEL);
    let used = false;
    const store = openStore(root, {
      retentionInternals: {
        beforeEvict: async (cachePath) => {
          if (cachePath === victim && !used) {
            used = true;
            await sleep(5);
            await useAuto(userSession, "victim");
          }
        },
      },
    });
    await store.ready;
    const result = await store.sweep({ maxBytes: 0 });
    expect(used).toBe(true);
    expect(result.evicted).toEqual([]);
    expect(await exists(victim)).toBe(true);
    // Later, with nobody using it, the next sweep takes it.
    expect((await store.sweep({ maxBytes: 0 })).evicted.map((e) => e.cacheKey)).toEqual([keyOf(victim)]);
    await store.close();
    await user.close();
  });

  it("an evicted cache is forgotten in memory too: the conversation's next turn primes again", async () => {
    const root = tempDir();
    const store = openStore(root);
    const session = store.createSession(MODEL);
    const cachePath = await commitAuto(session, "gone");
    expect(store.layers.savedCounts.get(cachePath)).toBe(2);
    await store.sweep({ maxBytes: 0 });
    expect(store.layers.savedCounts.has(cachePath)).toBe(false);
    expect(store.layers.trusted.has(cachePath)).toBe(false);
    // The conversation's next turn finds no cache and primes again (never loads a removed file).
    let primed = false;
    const turn = await session.beginTurn({
      kind: "auto",
      configHash,
      history: [
        { role: "user", content: "question gone" },
        { role: "assistant", content: "answer gone" },
        { role: "user", content: "more" },
      ],
      primeIfMissing: async (p) => {
        primed = true;
        await fs.writeFile(p, "state");
      },
    });
    expect(primed).toBe(true);
    await session.rollback(turn);
    await store.close();
  });
});

/** A store's reader of the shared log on a fresh root (whose `.kvkeep` exists, without a log yet). */
async function logReader(): Promise<{ logPath: string; reader: IndexLog }> {
  const root = tempDir();
  await fs.mkdir(path.join(root, ".kvkeep"));
  return { logPath: path.join(root, ".kvkeep", INDEX_LOG_NAME), reader: new IndexLog(root, "reader", recordingLogger()) };
}

describe("the shared index log", () => {
  it("another store's commits and removals on the same root reach this store's usage() and sweep through the log, without a rescan", async () => {
    const root = tempDir();
    const store = openStore(root);
    await store.ready;
    const other = openStore(root);
    const otherSession = other.createSession(MODEL);
    const a = await commitAuto(otherSession, "a", 700);
    await commitAuto(otherSession, "b", 800);
    await commitNamed(otherSession, "n", 900);
    await other.delete({ kvCacheKey: keyOf(a) });
    await other.retention.log.flushed();

    expect(await store.usage()).toEqual({ bytes: 1700, count: 2, autoBytes: 800, namedBytes: 900, logicalBytes: 1700, sharing: 1, chunkCount: 0, chunkBytes: 0, staleTempBytes: 0 });
    expect(store.retention.stats.resyncs).toBe(0);
    expect(store.retention.stats.recordsApplied).toBeGreaterThan(0);
    const result = await store.sweep({ maxBytes: 0 });
    expect(result.evicted.map((e) => e.bytes)).toEqual([800]);
    expect(store.retention.stats.resyncs).toBe(0);
    await other.close();
    await store.close();
  });

  it("the log's records are one JSON line each, with the cache's relative path, bytes, time, writer and (for a known conversation) its prefix facts", async () => {
    const root = tempDir();
    const store = openStore(root);
    const session = store.createSession(MODEL);
    const cachePath = await commitAuto(session, "line");
    await store.close();
    const lines = (await fs.readFile(path.join(root, ".kvkeep", INDEX_LOG_NAME), "utf8")).trim().split("\n").map((l) => JSON.parse(l));
    const rel = path.relative(root, cachePath).split(path.sep).join("/");
    expect(lines).toContainEqual({
      op: "put",
      p: rel,
      b: 1000,
      u: expect.any(Number),
      w: store.retention.log.writerId,
      f: null,
      c: [expect.stringMatching(/^[0-9a-f]{16}$/), expect.stringMatching(/^[0-9a-f]{16}$/)],
      m: 2,
      t: null,
    });
    expect(lines.some((l) => l.op === "del")).toBe(true); // the primed source, moved to the target
  });

  it("a line longer than any record (planted garbage) is skipped once, never read again, and the records after it are read", async () => {
    const { logPath, reader } = await logReader();
    reader.setReadPosition(await reader.position());
    const record = (u: number) => JSON.stringify({ op: "put", p: "k/m/h.bin", b: 5, u, w: "other" }) + "\n";
    await fs.appendFile(logPath, record(1) + "x".repeat(5 * 1024 * 1024)); // no newline: never a record
    expect(await reader.readNew()).toMatchObject({ replaced: false, records: [{ u: 1 }], skipped: 1 });
    // Every turn reads the log: the garbage is behind the reader now, not read again and again.
    const probe = await fs.open(logPath);
    const reads = vi.spyOn(Object.getPrototypeOf(probe) as { read: () => unknown }, "read");
    await probe.close();
    expect(await reader.readNew()).toEqual({ replaced: false, records: [], skipped: 0 });
    expect(reads).not.toHaveBeenCalled();
    reads.mockRestore();
    await fs.appendFile(logPath, "\n" + record(2));
    expect(await reader.readNew()).toMatchObject({ replaced: false, records: [{ u: 2 }] });
    await reader.close();
  });

  it("a reader more than 32 MiB behind (a planted hole) is told to resync from the disk instead of reading it all", async () => {
    const { logPath, reader } = await logReader();
    await fs.writeFile(logPath, JSON.stringify({ op: "put", p: "k/m/h.bin", b: 5, u: 1, w: "other" }) + "\n");
    reader.setReadPosition(await reader.position());
    await fs.truncate(logPath, 40 * 1024 * 1024);
    expect(await reader.readNew()).toEqual({ replaced: true });
    await reader.close();
  });

  it("a reader leaves a partial last line for its next read, and skips its own records", async () => {
    const { logPath, reader } = await logReader();
    reader.setReadPosition(await reader.position());
    const line = (op: string, w: string) => JSON.stringify({ op, p: "k/m/h.bin", b: 5, u: 1, w }) + "\n";
    const full = line("put", "other");
    await fs.appendFile(logPath, line("put", "reader") + full.slice(0, 20));
    expect(await reader.readNew()).toEqual({ replaced: false, records: [], skipped: 0 });
    await fs.appendFile(logPath, full.slice(20));
    expect(await reader.readNew()).toMatchObject({ replaced: false, records: [{ op: "put", w: "other" }] });
    // Replaced by another file (a compaction elsewhere): the reader is told, and resyncs.
    await fs.writeFile(`${logPath}.new`, line("put", "other"));
    await fs.rename(`${logPath}.new`, logPath);
    expect(await reader.readNew()).toEqual({ replaced: true });
    await reader.close();
  });

  it("the index survives compaction: the log is rewritten as a snapshot, and every store still sees every cache", async () => {
    const root = tempDir();
    const internals = { retentionInternals: { compactLogBytes: 512 } };
    const writer = openStore(root, internals);
    const compactor = openStore(root, internals);
    await Promise.all([writer.ready, compactor.ready]);
    const session = writer.createSession(MODEL);
    for (let i = 0; i < 6; i++) await commitAuto(session, `before-${i}`, 100 + i);
    await writer.retention.log.flushed();
    const logPath = path.join(root, ".kvkeep", INDEX_LOG_NAME);
    const inodeBefore = (await fs.stat(logPath)).ino;

    await compactor.sweep();
    expect(compactor.retention.stats.compactions).toBe(1);
    expect((await fs.stat(logPath)).ino).not.toBe(inodeBefore);
    const snapshot = (await fs.readFile(logPath, "utf8")).trim().split("\n").map((l) => JSON.parse(l));
    expect(snapshot).toHaveLength(6);
    expect(snapshot.every((r) => r.op === "put")).toBe(true);

    // The writer notices the new file and appends to it; the compactor reads those records.
    for (let i = 0; i < 3; i++) await commitAuto(session, `after-${i}`, 200);
    await writer.retention.log.flushed();
    const expected = { count: 9, autoBytes: 100 + 101 + 102 + 103 + 104 + 105 + 600 };
    expect(await compactor.usage()).toMatchObject(expected);
    expect(compactor.retention.stats.resyncs).toBe(0);
    // The snapshot, then the writer's records of those 3 turns (prime put, source del, target put each).
    expect((await fs.readFile(logPath, "utf8")).trim().split("\n")).toHaveLength(6 + 3 * 3);
    // The writer saw its log replaced by another store: it resyncs from the disk and agrees.
    expect(await writer.usage()).toMatchObject(expected);
    expect(writer.retention.stats.resyncs).toBe(1);
    // A store opened now agrees too.
    const fresh = openStore(root);
    expect(await fresh.usage()).toMatchObject(expected);
    await Promise.all([writer.close(), compactor.close(), fresh.close()]);
  });

  it("a snapshot larger than the threshold (long conversations' prefix chains) is compacted again only once the log has doubled, not at every sweep", async () => {
    const store = openStore(tempDir(), { retentionInternals: { compactLogBytes: 2048 } });
    const session = store.createSession(prefix.MODEL);
    // Two long conversations: their chains alone (~1.1 KB each in a record) outweigh the threshold.
    for (const tag of ["long-a", "long-b"]) await prefix.commitAutoConversation(session, prefix.conversation(tag, 30));
    const churn = async (rounds: number): Promise<void> => {
      for (let i = 0; i < rounds; i++) {
        const cachePath = await prefix.commitAutoConversation(session, prefix.conversation(`churn-${i}`, 1));
        await store.delete({ kvCacheKey: path.basename(path.dirname(path.dirname(cachePath))) });
      }
      await store.retention.whenIdle();
      await store.retention.log.flushed();
    };
    await churn(10);
    await store.sweep();
    expect(store.retention.stats.compactions).toBe(1);
    const logPath = path.join(store.root, ".kvkeep", INDEX_LOG_NAME);
    const snapshotBytes = (await fs.stat(logPath)).size;
    expect(snapshotBytes).toBeGreaterThan(2048);

    await store.sweep(); // nothing new: rewriting the same snapshot (and making every other process walk the root) buys nothing
    await store.sweep();
    expect(store.retention.stats.compactions).toBe(1);
    await churn(20); // the log grows past twice its snapshot: compacted again, so it stays bounded
    await store.sweep();
    expect(store.retention.stats.compactions).toBe(2);
    expect((await fs.stat(logPath)).size).toBeLessThan(2 * snapshotBytes);
    await store.close();
  });

  it("a cache removed behind the index's back is dropped from it, not reported, and costs no other cache its place", async () => {
    const root = tempDir();
    const store = openStore(root);
    const session = store.createSession(MODEL);
    const vanished = await commitAuto(session, "vanished");
    await sleep(5);
    const b = await commitAuto(session, "b");
    const c = await commitAuto(session, "c");
    // Removed by someone whose record never arrives.
    await fs.rm(path.dirname(path.dirname(vanished)), { recursive: true });

    const result = await store.sweep({ maxBytes: 2000 });
    expect(result.evicted).toEqual([]);
    expect(result.keptBytes).toBe(2000);
    expect(await exists(b)).toBe(true);
    expect(await exists(c)).toBe(true);
    expect(await exists(path.dirname(path.dirname(vanished)))).toBe(false); // no lock file or directory made for it
    expect(await store.usage()).toMatchObject({ count: 2, bytes: 2000 });
    await store.close();
  });

  it("a cache whose record was lost is found by the periodic resync from disk", async () => {
    const root = tempDir();
    const store = openStore(root, { retentionInternals: { resyncEverySweeps: 2 } });
    await store.ready;
    // Another store writes, but its records never reach the log (as if lost).
    const other = openStore(root);
    const session = other.createSession(MODEL);
    await commitAuto(session, "silent", 1234);
    await other.close();
    await fs.rm(path.join(root, ".kvkeep", INDEX_LOG_NAME));

    expect((await store.sweep({ maxBytes: 0 })).evicted).toEqual([]); // not in the index: not a candidate yet
    expect(store.retention.stats.resyncs).toBe(0);
    const second = await store.sweep({ maxBytes: 0 }); // the periodic resync walks the disk first
    expect(store.retention.stats.resyncs).toBe(1);
    expect(second.evicted.map((e) => e.bytes)).toEqual([1234]);
    await store.close();
  });
});

describe("when sweeps run", () => {
  it("a commit starts a background sweep at most once per sweepIntervalMs", async () => {
    const root = tempDir();
    const store = openStore(root, { sweepIntervalMs: 60_000 });
    const session = store.createSession(MODEL);
    await commitAuto(session, "first");
    await store.retention.whenIdle();
    expect(store.retention.stats.sweeps).toBe(1); // the first commit after open sweeps
    for (let i = 0; i < 5; i++) await commitAuto(session, `more-${i}`);
    await store.retention.whenIdle();
    expect(store.retention.stats.sweeps).toBe(1); // throttled
    await store.close();

    const eager = openStore(tempDir(), { sweepIntervalMs: 0 });
    const eagerSession = eager.createSession(MODEL);
    for (let i = 0; i < 3; i++) {
      await commitAuto(eagerSession, `e-${i}`);
      await eager.retention.whenIdle();
    }
    expect(eager.retention.stats.sweeps).toBe(3);
    await eager.close();
  });

  it("beginTurn never starts a sweep; a background sweep evicts by the store's own limits", async () => {
    const root = tempDir();
    const store = openStore(root, { maxBytes: 2500, sweepIntervalMs: 0 });
    const session = store.createSession(MODEL);
    await commitNamed(session, "named", 5000);
    await store.retention.whenIdle();
    const before = store.retention.stats.sweeps;
    const turn = await session.beginTurn({ kind: "custom", customKey: "named", configHash, primeIfMissing: async () => {} });
    await session.rollback(turn);
    expect(store.retention.stats.sweeps).toBe(before);
    for (let i = 0; i < 4; i++) {
      await commitAuto(session, `b-${i}`, 1000);
      await store.retention.whenIdle();
    }
    expect((await store.usage()).autoBytes).toBeLessThanOrEqual(2500);
    expect((await store.usage()).namedBytes).toBe(5000);
    await store.close();
  });

  it("a background sweep runs off the commit path: while it is paused, commits and new turns complete", async () => {
    const root = tempDir();
    const paused = gate();
    let reached!: () => void;
    const atGate = new Promise<void>((resolve) => (reached = resolve));
    const store = openStore(root, {
      maxBytes: 0,
      retentionInternals: {
        evictConcurrency: 1,
        beforeEvict: async () => {
          reached();
          await paused.promise;
        },
      },
    });
    const session = store.createSession(MODEL);
    await commitAuto(session, "trigger"); // starts the first background sweep, which pauses
    await atGate;
    const started = Date.now();
    await commitAuto(session, "meanwhile-1");
    await commitNamed(session, "meanwhile-2");
    expect(Date.now() - started).toBeLessThan(2000);
    expect(store.retention.stats.sweeps).toBe(1);
    paused.open();
    await store.retention.whenIdle();
    await store.close();
  });

  it("a manual sweep always runs, after the one running; a throttled one is skipped while one runs", async () => {
    const root = tempDir();
    const paused = gate();
    let reached!: () => void;
    const atGate = new Promise<void>((resolve) => (reached = resolve));
    const store = openStore(root, {
      maxBytes: 0,
      sweepIntervalMs: 0,
      retentionInternals: {
        beforeEvict: async () => {
          reached();
          await paused.promise;
        },
      },
    });
    const session = store.createSession(MODEL);
    await commitAuto(session, "one");
    await atGate;
    await commitAuto(session, "two"); // due (interval 0), but one is running: skipped
    const manual = store.sweep();
    paused.open();
    const result = await manual;
    expect(store.retention.stats.sweeps).toBe(2);
    expect(result.keptBytes).toBe(0);
    await store.close();
  });

  it("close() waits for a running sweep and leaves no timer behind", async () => {
    const timeoutsBefore = process.getActiveResourcesInfo().filter((r) => r === "Timeout").length;
    const root = tempDir();
    const paused = gate();
    let reached!: () => void;
    const atGate = new Promise<void>((resolve) => (reached = resolve));
    const store = openStore(root, {
      maxBytes: 0,
      retentionInternals: {
        beforeEvict: async () => {
          reached();
          await paused.promise;
        },
      },
    });
    const session = store.createSession(MODEL);
    const cachePath = await commitAuto(session, "x");
    await atGate;
    let closed = false;
    const closing = store.close().then(() => (closed = true));
    await new Promise((resolve) => setImmediate(resolve));
    await new Promise((resolve) => setImmediate(resolve));
    expect(closed).toBe(false);
    paused.open();
    await closing;
    expect(await exists(cachePath)).toBe(false); // the sweep finished its work before close resolved
    // No timer of kvkeep's is left (the test runner's own may come and go, so: no more than before).
    expect(process.getActiveResourcesInfo().filter((r) => r === "Timeout").length).toBeLessThanOrEqual(timeoutsBefore);
    await expect(store.sweep()).rejects.toMatchObject({ code: "STORE_CLOSED" });
  });
});

describe("reporting and validation", () => {
  it("the logger reports each eviction at info, with what was evicted and why", async () => {
    const root = tempDir();
    const setup = openStore(root);
    const s = setup.createSession(MODEL);
    const idle = await commitAuto(s, "idle");
    const lru = await commitAuto(s, "lru");
    await sleep(5);
    await commitAuto(s, "kept");
    await setup.close();
    await backdate(idle, 10 * 60 * 1000);

    const logger = recordingLogger();
    const store = openStore(root, { logger, maxIdleMs: 60_000 });
    await store.sweep({ maxBytes: 1000 });
    const evictions = logger.lines.filter((l) => l.line.startsWith("kvkeep: evicted cache"));
    expect(evictions.every((l) => l.level === "info")).toBe(true);
    expect(evictions.map((l) => l.line)).toEqual([
      expect.stringMatching(new RegExp(`reason=idle cacheKey=${keyOf(idle)} modelId=${MODEL} configHash=\\w+ bytes=1000 idleMs=\\d+`)),
      expect.stringMatching(new RegExp(`reason=budget cacheKey=${keyOf(lru)} modelId=${MODEL} configHash=\\w+ bytes=1000`)),
    ]);
    await store.close();
  });

  it("retention options and sweep overrides must be finite non-negative numbers (INVALID_ARGUMENT names the argument)", async () => {
    const root = tempDir();
    for (const [argument, value] of [
      ["maxBytes", -1],
      ["maxBytes", Number.NaN],
      ["maxIdleMs", Number.POSITIVE_INFINITY],
      ["sweepIntervalMs", "5"],
      ["evictNamed", "yes"],
    ] as const) {
      expect(() => openKvCacheStore({ root, [argument]: value } as never), `${argument}=${String(value)}`).toThrow(
        expect.objectContaining({ code: "INVALID_ARGUMENT", argument }),
      );
    }
    const store = openKvCacheStore({ root, maxBytes: 0, maxIdleMs: 0, sweepIntervalMs: 0, evictNamed: true });
    await expect(store.sweep({ maxBytes: -5 })).rejects.toMatchObject({ code: "INVALID_ARGUMENT", argument: "maxBytes" });
    await expect(store.sweep({ maxIdleMs: Number.NaN })).rejects.toMatchObject({ code: "INVALID_ARGUMENT", argument: "maxIdleMs" });
    await expect(store.sweep(null as never)).rejects.toMatchObject({ code: "INVALID_ARGUMENT", argument: "options" });
    await store.close();
  });
});
