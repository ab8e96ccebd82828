/**
 * Retention for one store: the index of the root (built at open, kept current by this
 * store's turns and other processes' log records), sweeps that evict idle and least
 * recently used caches, and the throttled background sweep after commits.
 *
 * Consistency rule (ARCHITECTURE.md, "Retention index"): the index is a hint for planning;
 * the disk under the cache's lock is the truth. A sweep takes each victim's lock without
 * waiting (skipping what is held, here or in another process) and re-checks it on disk
 * before removing it, so a stale index can only delay an eviction or make its order
 * slightly stale — never evict a held cache, or one used after the threshold it was
 * chosen for.
 */
import { randomBytes } from "node:crypto";
import { promises as fs } from "node:fs";
import { errnoCode, KvKeepError } from "../errors.js";
import { statIdentity } from "../durable/files.js";
import { deadWritersTemp } from "../durable/temp-owner.js";
import { cacheKindOf } from "../keys/safe-key.js";
import { type CacheLocation, cachePathOf, lockPathOf, manifestPathOf, parseCachePath, parseRelativeParts, relativeCachePath } from "../layout/paths.js";
import type { PathLockTable } from "../locks/path-locks.js";
import { type Logger, logLine } from "../logger.js";
import type { HistoryChain, PrefixCandidate, PrefixLookup } from "../index/prefix-index.js";
import { prefixScope } from "../index/prefix-index.js";
import { type ManifestEntry, sameIdentity } from "../manifest/format.js";
import { manifestNames } from "../manifest/ownership.js";
import { readLastUse, readManifest, removeCacheFiles, touchLastUse } from "../manifest/store.js";
import type { NativeFs } from "../native/index.js";
import type { RetentionHooks } from "../store/context.js";
import { initKey } from "../store/layers.js";
import { type ScannedModelDir, scanRoot } from "../store/scan.js";
import type { EvictedCache, StoreUsage, SweepOptions, SweepResult } from "../types.js";
import { IndexLog, type LogRead } from "./index-log.js";
import { type LogRecord, prefixFields, prefixOfRecord } from "./log-record.js";
import {
  type Candidate,
  checkLimit,
  clampUse,
  DEFAULT_MAX_BYTES,
  DEFAULT_MAX_IDLE_MS,
  DEFAULT_SWEEP_INTERVAL_MS,
  type IndexEntry,
  planSweep,
  type PrefixInfo,
  type RetentionLimits,
  stillVictim,
  type SweepPlan,
} from "./plan.js";
import { RetentionIndex } from "./retention-index.js";

/** What retention needs from its store. */
export interface RetentionDeps {
  readonly root: string;
  readonly logger: Logger;
  readonly nfs: NativeFs;
  readonly locks: PathLockTable;
  forgetCache(cachePath: string, init: string): void;
  prune(cachePath: string): Promise<void>;
  /** Told of each cache this store's sweeps evicted, right after its files are gone (the store's eviction events). */
  onEvicted?: ((evicted: EvictedCache) => void) | undefined;
  /**
   * Walks the root for a resync, calling `visit` for every model directory (the store's
   * recovery walk, which also removes dead writers' temp files). Default: a plain scan.
   */
  walkRoot?: ((visit: Visit) => Promise<unknown>) | undefined;
}

export interface RetentionSettings {
  maxBytes: number;
  maxIdleMs: number;
  sweepIntervalMs: number;
  evictNamed: boolean;
}

/** Knobs for tests and benchmarks; not part of the public options. */
export interface RetentionInternals {
  /** Compact the shared log once it is larger than this. Default 8 MiB. */
  compactLogBytes?: number;
  /** Resync the index from the disk every this many sweeps. Default 12 (hourly at the default interval). */
  resyncEverySweeps?: number;
  /** Evictions a sweep runs at once. Default 8. */
  evictConcurrency?: number;
  /** Awaited before each eviction attempt (tests pause a sweep here). */
  beforeEvict?: (cachePath: string) => Promise<void>;
  /** Awaited before the walk of the root at open (tests pause it here). */
  beforeOpenWalk?: () => Promise<void>;
}

export interface RetentionStats {
  /** Sweeps run (manual and background). */
  sweeps: number;
  /** Full walks of the root after the one at open (periodic, or after another process compacted the log). */
  resyncs: number;
  /** Compactions of the shared log this store did. */
  compactions: number;
  /** Other processes' log records applied. */
  recordsApplied: number;
}

export const DEFAULT_COMPACT_LOG_BYTES = 8 * 1024 * 1024;

const DEFAULT_RESYNC_EVERY_SWEEPS = 12;
const DEFAULT_EVICT_CONCURRENCY = 8;
/** Model directories stat-ed at once while the index is built from a walk. */
const COLLECT_CONCURRENCY = 32;
/**
 * A prefix lookup that finds the index needing a walk of the root (another process compacted
 * the log, or a walk failed) starts one in the background at most this often.
 */
const LOOKUP_RESYNC_INTERVAL_MS = 60_000;

type Visit = (modelDir: ScannedModelDir) => Promise<void>;

export function resolveRetentionSettings(options: {
  maxBytes?: unknown;
  maxIdleMs?: unknown;
  sweepIntervalMs?: unknown;
  evictNamed?: unknown;
}): RetentionSettings {
  if (options.evictNamed !== undefined && typeof options.evictNamed !== "boolean") {
    throw new KvKeepError("INVALID_ARGUMENT", "options.evictNamed must be a boolean.", { argument: "evictNamed" });
  }
  return {
    maxBytes: options.maxBytes === undefined ? DEFAULT_MAX_BYTES : checkLimit(options.maxBytes, "maxBytes"),
    maxIdleMs: options.maxIdleMs === undefined ? DEFAULT_MAX_IDLE_MS : checkLimit(options.maxIdleMs, "maxIdleMs"),
    sweepIntervalMs:
      options.sweepIntervalMs === undefined ? DEFAULT_SWEEP_INTERVAL_MS : checkLimit(options.sweepIntervalMs, "sweepIntervalMs"),
    evictNamed: options.evictNamed ?? false,
  };
}

/** Bytes of the temp files in `modelDir` whose writer is dead (recovery's walk removes them; these remained). */
async function staleTempBytesIn(modelDir: ScannedModelDir): Promise<number> {
  let bytes = 0;
  for (const file of modelDir.files) {
    if (file.kind !== "temp" || !deadWritersTemp(file.name)) continue;
    const st = await fs.lstat(file.path).catch(() => null);
    if (st?.isFile()) bytes += st.size;
  }
  return bytes;
}

function relativeOf(loc: CacheLocation): string {
  return relativeCachePath(loc);
}

function locationOf(entry: IndexEntry): CacheLocation {
  return { scopeId: entry.scopeId ?? null, cacheKey: entry.cacheKey, modelId: entry.modelId, configHash: entry.configHash };
}

function entryFor(loc: CacheLocation, bytes: number, lastUsedMs: number, prefix: PrefixInfo | null = null): IndexEntry {
  return {
    scopeId: loc.scopeId,
    cacheKey: loc.cacheKey,
    modelId: loc.modelId,
    configHash: loc.configHash,
    kind: cacheKindOf(loc.cacheKey),
    bytes,
    lastUsedMs,
    prefix,
  };
}

/** The prefix facts of a committed entry; null when its conversation is unknown (a prime). */
function prefixInfoOf(entry: ManifestEntry, fingerprint: string | null): PrefixInfo | null {
  if (!entry.chain || entry.chain.length === 0) return null;
  return { fingerprint, chain: entry.chain, messageCount: entry.messageCount, tokenCount: entry.tokenCount };
}

/** The prefix facts of the manifest slot the file on disk is (by identity), or null. */
function prefixOfManifest(read: Awaited<ReturnType<typeof readManifest>>, file: { size: number; ino: string; mtimeNs: string }): PrefixInfo | null {
  if (!("manifest" in read)) return null;
  const { manifest } = read;
  const entry = [manifest.current, manifest.pending].find((e) => e !== null && sameIdentity(e, file));
  return entry ? prefixInfoOf(entry, manifest.fingerprint) : null;
}

export class Retention implements RetentionHooks {
  readonly index = new RetentionIndex();
  readonly log: IndexLog;
  readonly settings: RetentionSettings;
  readonly stats: RetentionStats = { sweeps: 0, resyncs: 0, compactions: 0, recordsApplied: 0 };
  readonly #deps: RetentionDeps;
  readonly #internals: Required<Omit<RetentionInternals, "beforeEvict" | "beforeOpenWalk">> &
    Pick<RetentionInternals, "beforeEvict" | "beforeOpenWalk">;

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
  /** Sweeps, one at a time. */
  #sweepChain: Promise<unknown> = Promise.resolve();
  #sweepsQueued = 0;
  #lastSweepStart = Number.NEGATIVE_INFINITY;
  #sweepsSinceResync = 0;
  #needsResync = false;
  #closed = false;
  /** Bytes of dead writers' temp files the last walk found and could not remove. */
  #staleTempBytes = 0;
  /** Caches other processes' records told of since they were last checked on disk (#confirmRecords). */
  readonly #unconfirmed = new Set<string>();

  constructor(deps: RetentionDeps, settings: RetentionSettings, internals: RetentionInternals = {}) {
    this.#deps = deps;
    this.settings = settings;
    this.#internals = {
      compactLogBytes: internals.compactLogBytes ?? DEFAULT_COMPACT_LOG_BYTES,
      resyncEverySweeps: internals.resyncEverySweeps ?? DEFAULT_RESYNC_EVERY_SWEEPS,
      evictConcurrency: Math.max(1, internals.evictConcurrency ?? DEFAULT_EVICT_CONCURRENCY),
      beforeEvict: internals.beforeEvict,
      beforeOpenWalk: internals.beforeOpenWalk,
    };
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
      await this.#internals.beforeOpenWalk?.();
      return this.#rebuild(walk);
    });
    this.#built = result.then(
      () => undefined,
      () => undefined,
    );
    void this.#built.then(() => (this.#buildDone = true));
    return result;
  }

  // ── Hooks for the session and the store (RetentionHooks) ────────────────────────────

  noteCommitted(cachePath: string, entry: ManifestEntry, fingerprint: string | null): void {
    const loc = parseCachePath(this.#deps.root, cachePath);
    if (!loc) return;
    const u = Date.now();
    const prefix = prefixInfoOf(entry, fingerprint);
    this.index.put(cachePath, entryFor(loc, entry.size, u, prefix));
    this.log.append({ op: "put", p: relativeOf(loc), b: entry.size, u, w: this.log.writerId, ...prefixFields(prefix) });
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
    this.index.use(cachePath, u, entryFor(loc, entry.size, u));
    this.log.append({ op: "use", p: relativeOf(loc), b: entry.size, u, w: this.log.writerId });
  }

  noteRemoved(cachePath: string): void {
    const loc = parseCachePath(this.#deps.root, cachePath);
    if (!loc) return;
    const u = Date.now();
    this.index.remove(cachePath, u);
    this.log.append({ op: "del", p: relativeOf(loc), u, w: this.log.writerId });
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

  /** After a successful commit: start a background sweep when the last one started `sweepIntervalMs` ago or more. */
  afterCommit(): void {
    if (this.#closed) return;
    const now = Date.now();
    if (now - this.#lastSweepStart < this.settings.sweepIntervalMs) return;
    if (this.#sweepsQueued > 0) return; // one is running or queued: this one may be skipped
    this.#lastSweepStart = now; // claimed now, so a burst of commits starts one sweep
    this.#enqueueSweep(this.#limits()).catch((error: unknown) => {
      this.#deps.logger.warn(logLine("background retention sweep failed; the next commit after the interval retries", { error }));
    });
  }

  // ── Public operations (through the store) ───────────────────────────────────────────

  /** One sweep now, after any running one. */
  sweep(options?: SweepOptions): Promise<SweepResult> {
    let limits: RetentionLimits;
    try {
      limits = this.#limits(options);
    } catch (error) {
      return Promise.reject(error);
    }
    return this.#enqueueSweep(limits);
  }

  async usage(): Promise<StoreUsage> {
    await this.#built;
    await this.#refresh(false);
    await this.#confirmRecords();
    const caches = this.index.usage();
    return { ...caches, bytes: caches.bytes + this.#staleTempBytes, staleTempBytes: this.#staleTempBytes };
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

  /** Resolves when no sweep is running or queued. */
  async whenIdle(): Promise<void> {
    while (this.#sweepsQueued > 0) await this.#sweepChain;
  }

  /** No new background sweeps; wait for running ones, the index work and the log's pending appends. */
  async close(): Promise<void> {
    this.#closed = true;
    await this.whenIdle();
    await this.#built;
    await this.#indexWork.catch(() => {});
    await this.log.close();
  }

  // ── Sweeping ────────────────────────────────────────────────────────────────────────

  #limits(options?: SweepOptions): RetentionLimits {
    if (options !== undefined && (options === null || typeof options !== "object")) {
      throw new KvKeepError("INVALID_ARGUMENT", "sweep takes { maxBytes?, maxIdleMs? } or nothing.", { argument: "options" });
    }
    return {
      maxBytes: options?.maxBytes === undefined ? this.settings.maxBytes : checkLimit(options.maxBytes, "maxBytes"),
      maxIdleMs: options?.maxIdleMs === undefined ? this.settings.maxIdleMs : checkLimit(options.maxIdleMs, "maxIdleMs"),
      evictNamed: this.settings.evictNamed,
    };
  }

  #enqueueSweep(limits: RetentionLimits): Promise<SweepResult> {
    this.#sweepsQueued++;
    const run = this.#sweepChain.then(() => this.#runSweep(limits));
    this.#sweepChain = run.then(
      () => {
        this.#sweepsQueued--;
      },
      () => {
        this.#sweepsQueued--;
      },
    );
    return run;
  }

  async #runSweep(limits: RetentionLimits): Promise<SweepResult> {
    await this.#built;
    const started = Date.now();
    this.#lastSweepStart = started;
    this.stats.sweeps++;
    this.#sweepsSinceResync++;
    const periodic = this.#sweepsSinceResync >= this.#internals.resyncEverySweeps;
    if (periodic) this.#sweepsSinceResync = 0;
    await this.#refresh(periodic);
    await this.#confirmRecords(); // before a compaction writes the index out as a snapshot
    await this.#maybeCompact();
    await this.#confirmRecords(); // what the compaction read

    const plan = planSweep(this.index.entries(), limits, Date.now());
    const removed = { files: 0 };
    const evicted = await this.#execute(plan, limits, removed);
    const keptBytes = this.index.evictableBytes(limits.evictNamed);
    this.#deps.logger.debug(
      logLine("retention sweep finished", {
        evicted: evicted.length,
        freedBytes: evicted.reduce((sum, e) => sum + e.bytes, 0),
        keptBytes,
        maxBytes: limits.maxBytes,
        ms: Date.now() - started,
      }),
    );
    return { evicted, keptBytes, removedFiles: removed.files };
  }

  /** Evict the idle candidates, then LRU ones until the budget holds; a few at a time. */
  async #execute(plan: SweepPlan, limits: RetentionLimits, removed: { files: number }): Promise<EvictedCache[]> {
    const done: Array<{ candidate: Candidate; evicted: EvictedCache }> = [];
    let remaining = plan.evictableBytes;
    const attempt = async (candidate: Candidate): Promise<void> => {
      const outcome = await this.#evictOne(candidate, plan.idleCutoffMs, removed);
      if (outcome === "kept") return;
      remaining -= candidate.entry.bytes; // evicted, or already gone: either way not on disk
      if (outcome !== "gone") done.push({ candidate, evicted: outcome });
    };

    const idle = plan.idle[Symbol.iterator]();
    await this.#pool(
      () => {
        const next = idle.next();
        return next.done ? null : next.value;
      },
      attempt,
    );

    const order = plan.budgetOrder();
    let inFlight = 0;
    await this.#pool(
      () => {
        if (remaining - inFlight <= limits.maxBytes) return null;
        const next = order.next();
        if (next.done) return null;
        inFlight += next.value.entry.bytes;
        return next.value;
      },
      async (candidate) => {
        try {
          await attempt(candidate);
        } finally {
          inFlight -= candidate.entry.bytes;
        }
      },
    );

    done.sort(
      (a, b) =>
        (a.candidate.reason === b.candidate.reason ? 0 : a.candidate.reason === "idle" ? -1 : 1) ||
        a.candidate.entry.lastUsedMs - b.candidate.entry.lastUsedMs,
    );
    return done.map((d) => d.evicted);
  }

  /** Run `work` on what `next` hands out, `evictConcurrency` at a time, until it hands out null. */
  async #pool(next: () => Candidate | null, work: (candidate: Candidate) => Promise<unknown>): Promise<void> {
    const worker = async (): Promise<void> => {
      for (let candidate = next(); candidate; candidate = next()) await work(candidate);
    };
    await Promise.all(Array.from({ length: this.#internals.evictConcurrency }, worker));
  }

  /**
   * Evict one candidate if it is still a victim: its lock taken without waiting (held →
   * kept), then, under the lock, the file still there and its last use on disk still
   * what made it a victim. `gone`: it was not on disk any more (a removal whose record was
   * not seen yet). Never throws: a failure keeps the cache and is logged.
   */
  async #evictOne(candidate: Candidate, idleCutoffMs: number, counter: { files: number }): Promise<EvictedCache | "kept" | "gone"> {
    const { cachePath, entry } = candidate;
    const { locks, logger } = this.#deps;
    try {
      await this.#internals.beforeEvict?.(cachePath);
      // Checked before locking too, so a vanished cache gets no lock file (or directories) made for it.
      if (!(await statIdentity(cachePath))) {
        this.index.remove(cachePath);
        return "gone";
      }
      // And a file nothing proves kvkeep's gets no lock file made beside it.
      if (!manifestNames(await readManifest(cachePath, this.#deps.nfs), locationOf(entry))) return this.#leaveForeign(cachePath);
      const lease = locks.tryAcquire(cachePath);
      if (!lease) {
        logger.debug(logLine("retention kept a cache in use", { cachePath, reason: candidate.reason }));
        return "kept";
      }
      let removed = false;
      let vanished = false;
      let foreign = false;
      let bytes = 0;
      try {
        const [identity, diskUseMs, read] = await Promise.all([statIdentity(cachePath), readLastUse(cachePath), readManifest(cachePath, this.#deps.nfs)]);
        if (!identity) {
          vanished = true;
        } else if (!manifestNames(read, locationOf(entry))) {
          // Not provably kvkeep's (no manifest names it: a record pointed at someone's file,
          // or a crash left a bin without its manifest): never removed, and not a cache.
          foreign = true;
        } else if (!stillVictim(candidate, diskUseMs, idleCutoffMs, Date.now())) {
          // Used since the index last heard of it: learn that, and keep it.
          if (diskUseMs !== null) this.index.use(cachePath, clampUse(diskUseMs, Date.now()));
          return "kept";
        } else {
          const files = await removeCacheFiles(cachePath); // (not `+= await`: sweeps evict several at once)
          counter.files += files;
          removed = true;
          bytes = identity.size;
        }
      } finally {
        lease.release({ removeLockFile: removed || vanished });
      }
      if (removed && !(await fs.lstat(lockPathOf(cachePath)).catch(() => null))) counter.files++;
      if (vanished) {
        this.index.remove(cachePath);
        await this.#deps.prune(cachePath);
        return "gone";
      }
      if (foreign) return this.#leaveForeign(cachePath);
      const u = Date.now();
      this.index.remove(cachePath);
      this.log.append({ op: "del", p: relativeOf(locationOf(entry)), u, w: this.log.writerId });
      this.#deps.forgetCache(cachePath, initKey(locationOf(entry)));
      await this.#deps.prune(cachePath);
      logger.info(
        logLine("evicted cache", {
          reason: candidate.reason,
          cacheKey: entry.cacheKey,
          modelId: entry.modelId,
          configHash: entry.configHash,
          bytes,
          idleMs: u - entry.lastUsedMs,
        }),
      );
      const evicted: EvictedCache = {
        scopeId: entry.scopeId ?? null,
        cacheKey: entry.cacheKey,
        modelId: entry.modelId,
        configHash: entry.configHash,
        bytes,
        reason: candidate.reason,
      };
      this.#deps.onEvicted?.(evicted);
      return evicted;
    } catch (error) {
      logger.warn(logLine("retention could not evict a cache; it stays", { cachePath, error }));
      return "kept";
    }
  }

  /** A candidate that is not provably a cache: out of the index, its file untouched. */
  #leaveForeign(cachePath: string): "gone" {
    this.index.remove(cachePath);
    // Info, not a warning: nothing failed (a sweep's warnings make `kvkeep gc` exit 1).
    this.#deps.logger.info(logLine("retention left a file no kvkeep manifest names (not a cache it may remove)", { cachePath }));
    return "gone";
  }

  // ── The index: refresh from the log, rebuild from the disk, compaction ─────────────

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
      this.#refresh(false).catch((error: unknown) => {
        this.#deps.logger.warn(logLine("could not resync the retention index from the disk; the next sweep retries", { error }));
      });
    });
  }

  /** Apply other processes' new log records; resync from the disk when asked, due, or when the log was replaced. */
  #refresh(forceResync: boolean): Promise<void> {
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
    const fresh = new Map<string, IndexEntry>();
    const staleTemps = new Map<string, number>();
    // Directories are stat-ed a few at a time without holding the walk up.
    const inFlight = new Set<Promise<void>>();
    let failure: { error: unknown } | null = null;
    const visit = async (modelDir: ScannedModelDir): Promise<void> => {
      const pending: Promise<void> = Promise.all([this.#collect(modelDir), staleTempBytesIn(modelDir)]).then(
        ([found, tempBytes]) => {
          for (const [cachePath, entry] of found) fresh.set(cachePath, entry);
          if (tempBytes > 0) staleTemps.set(modelDir.dir, tempBytes);
        },
        (error: unknown) => {
          failure ??= { error };
        },
      );
      inFlight.add(pending);
      void pending.finally(() => inFlight.delete(pending));
      if (inFlight.size >= COLLECT_CONCURRENCY) await Promise.race(inFlight);
    };
    try {
      const result = await walk(visit);
      await Promise.all(inFlight);
      if (failure) throw (failure as { error: unknown }).error;
      this.index.finishRebuild(fresh);
      // The walk read the disk: what records told before it is moot (later ones are applied after).
      this.#unconfirmed.clear();
      this.#staleTempBytes = [...staleTemps.values()].reduce((a, b) => a + b, 0);
      mark ??= { ino: null, offset: 0 };
      this.log.setReadPosition(mark);
      this.#needsResync = false;
      return result;
    } catch (error) {
      await Promise.all(inFlight);
      this.index.abortRebuild();
      this.#needsResync = true;
      throw error;
    }
  }

  /**
   * The caches of one model directory: every `.bin` with a manifest; bytes from a stat, last
   * use from the manifest's mtime, prefix facts from the manifest slot the file matches.
   */
  async #collect(modelDir: ScannedModelDir): Promise<Array<[string, IndexEntry]>> {
    const names = new Set(modelDir.files.map((f) => f.name));
    const found = await Promise.all(
      modelDir.files
        .filter((f) => f.kind === "cache" && names.has(`${f.configHash}.meta.json`))
        .map(async (f): Promise<[string, IndexEntry] | null> => {
          const loc = { scopeId: modelDir.scopeId, cacheKey: modelDir.cacheKey, modelId: modelDir.modelId, configHash: f.configHash! };
          const cachePath = cachePathOf(this.#deps.root, loc);
          const entry = await this.#entryFromDisk(cachePath, loc);
          return entry ? [cachePath, entry] : null;
        }),
    );
    return found.filter((x): x is [string, IndexEntry] => x !== null);
  }

  /**
   * What the disk says of one cache: null when it is not there or not provably kvkeep's (no
   * manifest names it); else bytes from a stat, last use from the manifest's mtime, prefix
   * facts from the manifest slot the file matches.
   */
  async #entryFromDisk(cachePath: string, loc: CacheLocation): Promise<IndexEntry | null> {
    try {
      // lstat: the entries themselves, never what a symlink planted there points to.
      const [bin, manifest, read] = await Promise.all([
        statIdentity(cachePath),
        fs.lstat(manifestPathOf(cachePath)),
        readManifest(cachePath, this.#deps.nfs),
      ]);
      // Only a cache its manifest proves kvkeep's is retention's to count or evict.
      if (!bin || !manifest.isFile() || !manifestNames(read, loc)) return null;
      const lastUse = clampUse(Math.floor(manifest.mtimeMs), Date.now());
      return entryFor(loc, bin.size, lastUse, prefixOfManifest(read, bin));
    } catch (error) {
      if (errnoCode(error) === "ENOENT" || errnoCode(error) === "ENOTDIR") return null; // removed meanwhile
      throw error;
    }
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
  async #confirmRecords(): Promise<void> {
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
            disk = await this.#entryFromDisk(cachePath, loc);
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

  #apply(records: LogRecord[]): void {
    const root = this.#deps.root;
    const now = Date.now();
    for (const raw of records) {
      const record = { ...raw, u: clampUse(raw.u, now) }; // another process's clock may run ahead
      const parts = record.p.split("/");
      // Only exactly `[.scopes/<scope id>/]<key>/<model>/<hash>.bin` under this root: a record
      // never names anything else (its scope is the path's, never a field a record could claim).
      const loc = parseRelativeParts(parts);
      if (!loc || relativeOf(loc) !== record.p) continue;
      const cachePath = cachePathOf(root, loc);
      this.stats.recordsApplied++;
      // Bytes and existence come from the record for now, and are checked on disk before a
      // sweep or usage() relies on them (#confirmRecords). A `use` of a known cache changes
      // only its last use, which can delay an eviction, never cause one.
      if (record.op === "put") {
        this.index.put(cachePath, entryFor(loc, record.b ?? 0, record.u, prefixOfRecord(record)));
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

  /**
   * Whether the log is worth compacting: past the threshold, and at least twice what a
   * snapshot of the index takes. Prefix chains make a snapshot of long conversations grow
   * past any fixed threshold; compacting it again at every sweep would rewrite the same
   * records and make every other process walk the root each time.
   */
  #compactionDue(): boolean {
    return this.log.lastSeenSize >= Math.max(this.#internals.compactLogBytes, 2 * this.index.snapshotBytes);
  }

  /**
   * When the log has grown past the threshold (and twice a snapshot), the sweeping store that
   * can take the index lock without waiting rewrites it as a snapshot of its (just refreshed) index.
   */
  async #maybeCompact(): Promise<void> {
    if (!this.#compactionDue()) return;
    let lock;
    try {
      lock = this.#deps.nfs.tryLockFile(this.log.lockPath, "exclusive", { under: this.#deps.root });
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
          snapshot.push({ op: "put", p: relativeOf(locationOf(e)), b: e.bytes, u: e.lastUsedMs, w: writer, ...prefixFields(e.prefix) });
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
}
