/**
 * The root catalog of one store: what caches the root holds (the retention index, built by a
 * walk at open), kept current by this store's turns (the hooks) and by other processes'
 * records in the shared index log, and the prefix feed the prefix index answers lookups from.
 * The sweeper (src/retention/retention.ts) plans over it and tells it what it evicted.
 *
 * Consistency rule (ARCHITECTURE.md, "Retention index"): the catalog is a hint for planning
 * and lookups; the disk under the cache's lock is the truth. A record from another process
 * is checked on disk before a sweep or `usage()` relies on it (`confirmRecords`).
 */
import { randomBytes } from "node:crypto";
import { type CacheLocation, cachePathOf, parseCachePath, parseRelativeParts, relativeCachePath } from "../layout/paths.js";
import { type Logger, logLine } from "../logger.js";
import type { ManifestEntry } from "../manifest/format.js";
import { touchLastUse } from "../manifest/store.js";
import type { NativeFs } from "../native/index.js";
import { type HistoryChain, type PrefixCandidate, type PrefixLookup, prefixScope } from "../prefix/prefix-index.js";
import type { StoreUsage } from "../types.js";
import { chunkRefsOf, clampUse, entryFor, type IndexEntry, locationOf, prefixInfoOf } from "./entry.js";
import { COLLECT_CONCURRENCY, collectFromWalk, entryFromDisk, type Visit } from "./from-disk.js";
import { IndexLog, type LogRead } from "./index-log.js";
import { chunkFields, chunksOfRecord, type LogRecord, prefixFields, prefixOfRecord } from "./log-record.js";
import { RetentionIndex } from "./retention-index.js";
import { scanRoot } from "./scan.js";

export type { Visit };

/** What the catalog needs from its store. */
export interface CatalogDeps {
  readonly root: string;
  readonly logger: Logger;
  readonly fsBackend: NativeFs;
  /**
   * Walks the root for a resync, calling `visit` for every model directory (the store's
   * recovery walk, which also removes dead writers' temp files). Default: a plain scan.
   */
  walkRoot?: ((visit: Visit) => Promise<unknown>) | undefined;
}

/** Knobs for tests and benchmarks; not part of the public options. */
export interface CatalogInternals {
  /** Compact the shared log once it is larger than this. Default 8 MiB. */
  compactLogBytes?: number | undefined;
  /** Awaited before the walk of the root at open (tests pause it here). */
  beforeOpenWalk?: (() => Promise<void>) | undefined;
}

export interface CatalogStats {
  /** Full walks of the root after the one at open (periodic, or after another process compacted the log). */
  resyncs: number;
  /** Compactions of the shared log this store did. */
  compactions: number;
  /** Other processes' log records applied. */
  recordsApplied: number;
}

export const DEFAULT_COMPACT_LOG_BYTES = 8 * 1024 * 1024;

/**
 * A prefix lookup that finds the index needing a walk of the root (another process compacted
 * the log, or a walk failed) starts one in the background at most this often.
 */
const LOOKUP_RESYNC_INTERVAL_MS = 60_000;

export class RootCatalog {
  readonly index = new RetentionIndex();
  readonly log: IndexLog;
  readonly stats: CatalogStats = { resyncs: 0, compactions: 0, recordsApplied: 0 };
  readonly #deps: CatalogDeps;
  readonly #compactLogBytes: number;
  readonly #beforeOpenWalk: (() => Promise<void>) | undefined;

  /** Resolves (never rejects) once the index was first built. */
  #built: Promise<void> = Promise.resolve();
  /** Resolves once the log's records were applied at open (before the walk finishes). */
  #hinted: Promise<void> = Promise.resolve();
  #buildDone = true;
  /** Index refreshes and rebuilds, one at a time. */
  #indexWork: Promise<unknown> = Promise.resolve();
  /** Index work queued or running (a prefix lookup never queues behind it). */
  #indexWorkPending = 0;
  /** When a prefix lookup last started a background walk of the root. */
  #lastLookupResync = Number.NEGATIVE_INFINITY;
  #needsResync = false;
  #closed = false;
  /** Bytes of dead writers' temp files the last walk found and could not remove. */
  #staleTempBytes = 0;
  /** Caches other processes' records told of since they were last checked on disk (confirmRecords). */
  readonly #unconfirmed = new Set<string>();

  constructor(deps: CatalogDeps, internals: CatalogInternals = {}) {
    this.#deps = deps;
    this.#compactLogBytes = internals.compactLogBytes ?? DEFAULT_COMPACT_LOG_BYTES;
    this.#beforeOpenWalk = internals.beforeOpenWalk;
    const writerId = `${process.pid.toString(36)}-${randomBytes(4).toString("hex")}`;
    this.log = new IndexLog(deps.root, writerId, deps.logger);
  }

  /**
   * Build the index at open from a walk of the root that someone else drives (recovery
   * calls `visit` for each model directory, so the root is walked once). Returns the
   * walk's result; a failed walk leaves the index to be rebuilt by the next sweep.
   */
  buildAtOpen<T>(walk: (visit: Visit) => Promise<T>): Promise<T> {
    this.#buildDone = false;
    // Until the walk is done (seconds on a big root), the index starts from the shared log:
    // a hint the prefix index can answer from at once (a borrow re-checks every candidate).
    this.#hinted = this.#serialIndexWork(async () => {
      try {
        const records = await this.log.readAll();
        if (records) this.#apply(records);
      } catch (error) {
        this.#deps.logger.debug(logLine("could not read the index log at open; waiting for the walk", { error }));
      }
    });
    const result = this.#serialIndexWork(async () => {
      await this.#beforeOpenWalk?.();
      return this.#rebuild(walk);
    });
    this.#built = result.then(
      () => undefined,
      () => undefined,
    );
    void this.#built.then(() => (this.#buildDone = true));
    return result;
  }

  /** Resolves (never rejects) once the index was first built. */
  whenBuilt(): Promise<void> {
    return this.#built;
  }

  // ── What this store's turns and deletes change (RetentionHooks, through the sweeper) ──

  noteCommitted(cachePath: string, entry: ManifestEntry, fingerprint: string | null): void {
    const loc = parseCachePath(this.#deps.root, cachePath);
    if (!loc) return;
    const u = Date.now();
    const prefix = prefixInfoOf(entry, fingerprint);
    const chunks = chunkRefsOf(entry);
    this.index.put(cachePath, entryFor(loc, entry.size, u, prefix, chunks));
    this.log.append({ op: "put", p: relativeCachePath(loc), b: entry.size, u, w: this.log.writerId, ...prefixFields(prefix), ...chunkFields(chunks) });
  }

  async noteUsed(cachePath: string, entry: ManifestEntry): Promise<void> {
    const loc = parseCachePath(this.#deps.root, cachePath);
    if (!loc) return;
    const u = Date.now();
    try {
      await touchLastUse(cachePath, u);
    } catch (error) {
      // Only the persisted use time is lost (a restart sees the last commit instead).
      this.#deps.logger.debug(logLine("could not record the cache's last use on disk", { cachePath, error }));
    }
    this.index.use(cachePath, u, entryFor(loc, entry.size, u, null, chunkRefsOf(entry)));
    this.log.append({ op: "use", p: relativeCachePath(loc), b: entry.size, u, w: this.log.writerId });
  }

  noteRemoved(cachePath: string): void {
    const loc = parseCachePath(this.#deps.root, cachePath);
    if (!loc) return;
    this.#removed(cachePath, loc, Date.now());
  }

  /** The sweeper evicted the cache `entry` describes: out of the index, and a record for the other processes. */
  noteEvicted(cachePath: string, entry: IndexEntry): void {
    this.#removed(cachePath, locationOf(entry), undefined);
  }

  #removed(cachePath: string, loc: CacheLocation, u: number | undefined): void {
    this.index.remove(cachePath, u);
    this.log.append({ op: "del", p: relativeCachePath(loc), u: u ?? Date.now(), w: this.log.writerId });
  }

  /**
   * A cache the index lists was found gone from the disk outside kvkeep (removed by hand, a
   * lost record). Dropped from this process's index only, and only as it was seen before the
   * disk was looked at (`seenLastUsedMs`: the entry's last use then) — no log
   * record: another process may be committing that key again right now, and its newer
   * `put` must win everywhere.
   */
  forgetVanished(cachePath: string, seenLastUsedMs: number | undefined): void {
    const now = this.index.get(cachePath);
    // A commit of that key in this process since the look (a newer entry) is not touched.
    if (now && seenLastUsedMs !== undefined && now.lastUsedMs === seenLastUsedMs) this.index.remove(cachePath, seenLastUsedMs);
  }

  // ── What the store and the sweeper ask ──────────────────────────────────────────────

  async usage(): Promise<StoreUsage> {
    await this.#built;
    await this.refresh(false);
    await this.confirmRecords();
    const caches = this.index.usage();
    const sharing = caches.bytes > 0 ? caches.logicalBytes / caches.bytes : 1;
    return { ...caches, sharing, bytes: caches.bytes + this.#staleTempBytes, staleTempBytes: this.#staleTempBytes };
  }

  /**
   * Caches sharing the longest message prefix with `history` in one scope, from the index
   * (with other processes' new log records applied when the index is idle). Every turn looks
   * up, so this never walks the root and never waits for a walk — the one at open (the log's
   * records answer meanwhile), a sweep's resync, or a compaction: the index is a hint, and a
   * borrow re-checks what it answers.
   */
  async lookupPrefix(
    scope: { scopeId: string | null; modelId: string; fingerprint: string | null; configHash: string },
    history: HistoryChain,
    options?: PrefixLookup,
  ): Promise<PrefixCandidate[]> {
    await this.#hinted;
    if (this.#buildDone && this.#indexWorkPending === 0) await this.#refreshForLookup();
    return this.index.prefix.lookup(prefixScope(scope.modelId, scope.fingerprint, scope.configHash, scope.scopeId), history, options);
  }

  /** No new background walks; wait for the index work and the log's pending appends. */
  async close(): Promise<void> {
    this.#closed = true;
    await this.#built;
    await this.#indexWork.catch(() => {});
    await this.log.close();
  }

  /** Apply other processes' new log records; resync from the disk when asked, due, or when the log was replaced. */
  refresh(forceResync: boolean): Promise<void> {
    return this.#serialIndexWork(async () => {
      let resync = forceResync || this.#needsResync;
      if (!resync) {
        const read = await this.#readLog();
        if (read.replaced) resync = true; // compacted by another process: what we missed is unknowable
        else this.#apply(read.records);
      }
      if (!resync) return;
      this.stats.resyncs++;
      await this.#rebuild(
        this.#deps.walkRoot ??
          (async (visit) => {
            for await (const modelDir of scanRoot(this.#deps.root)) await visit(modelDir);
          }),
      );
      const read = await this.#readLog();
      if (read.replaced) this.#needsResync = true;
      else this.#apply(read.records);
    });
  }

  /**
   * Check on disk what other processes' records told of since the last check (#apply): a
   * record is a hint, and the log is writable by anyone who can write the root. A `put` or
   * `use` that made an entry gets its bytes (and last use) from the disk, or is dropped when
   * there is no such cache; a `del` of a cache that is still there is undone. Runs before a
   * sweep plans and before usage() answers, so no planted record decides an eviction or a
   * figure. An entry this process changed meanwhile (its own commit or delete) is left as it
   * is; one whose check fails (EIO) is kept as the record said and checked again next time.
   */
  async confirmRecords(): Promise<void> {
    if (this.#unconfirmed.size === 0) return;
    await this.#serialIndexWork(async () => {
      const paths = [...this.#unconfirmed];
      this.#unconfirmed.clear();
      const root = this.#deps.root;
      let next = 0;
      const worker = async (): Promise<void> => {
        while (next < paths.length) {
          const cachePath = paths[next++]!;
          const loc = parseCachePath(root, cachePath);
          if (!loc) continue;
          const seen = this.index.get(cachePath);
          let disk: IndexEntry | null;
          try {
            disk = await entryFromDisk(this.#deps.fsBackend, cachePath, loc);
          } catch (error) {
            this.#unconfirmed.add(cachePath);
            this.#deps.logger.debug(logLine("could not check a cache a log record named; checked again later", { cachePath, error }));
            continue;
          }
          this.index.confirm(cachePath, seen, disk);
        }
      };
      await Promise.all(Array.from({ length: Math.min(COLLECT_CONCURRENCY, paths.length) }, worker));
    });
  }

  /**
   * When the log has grown past the threshold (and twice a snapshot), the sweeping store that
   * can take the index lock without waiting rewrites it as a snapshot of its (just refreshed) index.
   */
  async maybeCompact(): Promise<void> {
    if (!this.#compactionDue()) return;
    let lock;
    try {
      lock = this.#deps.fsBackend.tryLockFile(this.log.lockPath, "exclusive", { under: this.#deps.root });
    } catch (error) {
      this.#deps.logger.debug(logLine("could not take the index log's lock; not compacting", { error }));
      return;
    }
    if (!lock) return; // another process is compacting
    try {
      await this.#serialIndexWork(async () => {
        const read = await this.#readLog();
        if (read.replaced) {
          this.#needsResync = true; // someone compacted just before us
          return;
        }
        this.#apply(read.records);
        if (!this.#compactionDue()) return;
        const writer = this.log.writerId;
        const snapshot: LogRecord[] = [];
        for (const [, e] of this.index.entries()) {
          snapshot.push({ op: "put", p: relativeCachePath(locationOf(e)), b: e.bytes, u: e.lastUsedMs, w: writer, ...prefixFields(e.prefix), ...chunkFields(e.chunks) });
        }
        await this.log.replaceWith(snapshot);
        this.stats.compactions++;
        this.#deps.logger.debug(logLine("compacted the retention index log", { path: this.log.path, caches: this.index.size }));
      });
    } catch (error) {
      this.#deps.logger.warn(logLine("could not compact the retention index log", { error }));
    } finally {
      lock.release();
    }
  }

  // ── The index: refresh from the log, rebuild from the disk ──────────────────────────

  #serialIndexWork<T>(work: () => Promise<T>): Promise<T> {
    this.#indexWorkPending++;
    const run = this.#indexWork.then(work).finally(() => this.#indexWorkPending--);
    this.#indexWork = run.catch(() => {});
    return run;
  }

  /**
   * A prefix lookup's refresh: other processes' new log records, never a walk. When the
   * index needs one (the log was replaced by another process's compaction, or a walk
   * failed), it starts in the background — at most once per LOOKUP_RESYNC_INTERVAL_MS — and
   * the lookup answers from the index as it is.
   */
  #refreshForLookup(): Promise<void> {
    return this.#serialIndexWork(async () => {
      if (!this.#needsResync) {
        const read = await this.#readLog();
        if (!read.replaced) {
          this.#apply(read.records);
          return;
        }
        this.#needsResync = true;
      }
      const now = Date.now();
      if (this.#closed || now - this.#lastLookupResync < LOOKUP_RESYNC_INTERVAL_MS) return;
      this.#lastLookupResync = now;
      this.refresh(false).catch((error: unknown) => {
        this.#deps.logger.warn(logLine("could not resync the retention index from the disk; the next sweep retries", { error }));
      });
    });
  }

  /** The log's new records; an unreadable log counts as replaced (the disk is walked instead). */
  async #readLog(): Promise<LogRead> {
    try {
      return await this.log.readNew();
    } catch (error) {
      this.#deps.logger.warn(logLine("could not read the retention index log; resyncing from the disk", { path: this.log.path, error }));
      return { replaced: true };
    }
  }

  /**
   * Rebuild the index from a walk of the disk: the log's end is recorded first and read
   * from afterwards, and this store's own changes during the walk are replayed onto it,
   * so nothing that happens while the walk runs is lost.
   */
  async #rebuild<T>(walk: (visit: Visit) => Promise<T>): Promise<T> {
    let mark = await this.log.position().catch(() => null);
    this.index.beginRebuild();
    try {
      const found = await collectFromWalk(this.#deps.root, this.#deps.fsBackend, walk);
      this.index.finishRebuild(found.entries);
      // The walk read the disk: what records told before it is moot (later ones are applied after).
      this.#unconfirmed.clear();
      this.#staleTempBytes = found.staleTempBytes;
      mark ??= { ino: null, offset: 0 };
      this.log.setReadPosition(mark);
      this.#needsResync = false;
      return found.result;
    } catch (error) {
      this.index.abortRebuild();
      this.#needsResync = true;
      throw error;
    }
  }

  /**
   * Whether the log is worth compacting: past the threshold, and at least twice what a
   * snapshot of the index takes. Prefix chains make a snapshot of long conversations grow
   * past any fixed threshold; compacting it again at every sweep would rewrite the same
   * records and make every other process walk the root each time.
   */
  #compactionDue(): boolean {
    return this.log.lastSeenSize >= Math.max(this.#compactLogBytes, 2 * this.index.snapshotBytes);
  }

  #apply(records: LogRecord[]): void {
    const root = this.#deps.root;
    const now = Date.now();
    for (const raw of records) {
      const record = { ...raw, u: clampUse(raw.u, now) }; // another process's clock may run ahead
      const parts = record.p.split("/");
      // Only exactly `[.scopes/<scope id>/]<key>/<model>/<hash>.bin` under this root: a record
      // never names anything else (its scope is the path's, never a field a record could claim).
      const loc = parseRelativeParts(parts);
      if (!loc || relativeCachePath(loc) !== record.p) continue;
      const cachePath = cachePathOf(root, loc);
      this.stats.recordsApplied++;
      // Bytes and existence come from the record for now, and are checked on disk before a
      // sweep or usage() relies on them (confirmRecords). A `use` of a known cache changes
      // only its last use, which can delay an eviction, never cause one.
      if (record.op === "put") {
        this.index.put(cachePath, entryFor(loc, record.b ?? 0, record.u, prefixOfRecord(record), chunksOfRecord(record)));
        this.#unconfirmed.add(cachePath);
      } else if (record.op === "use") {
        const known = this.index.get(cachePath) !== undefined;
        this.index.use(cachePath, record.u, record.b === undefined ? undefined : entryFor(loc, record.b, record.u));
        if (!known) this.#unconfirmed.add(cachePath);
      } else {
        this.index.remove(cachePath, record.u);
        this.#unconfirmed.add(cachePath);
      }
    }
  }
}
