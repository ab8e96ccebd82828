/**
 * The sweeper of one store: sweeps that evict idle and least recently used caches, and the
 * throttled background sweep after commits. It plans over the root catalog
 * (src/catalog/catalog.ts), which it also hands the hooks of sessions and deletes to.
 *
 * Consistency rule (ARCHITECTURE.md, "Retention index"): the catalog is a hint for planning;
 * the disk under the cache's lock is the truth. A sweep takes each victim's lock without
 * waiting (skipping what is held, here or in another process) and re-checks it on disk
 * before removing it, so a stale index can only delay an eviction or make its order
 * slightly stale — never evict a held cache, or one used after the threshold it was
 * chosen for.
 */
import { promises as fs } from "node:fs";
import type { ChunkFiles } from "../chunkfiles/chunk-files.js";
import { type CatalogInternals, RootCatalog, type Visit } from "../catalog/catalog.js";
import { clampUse, locationOf } from "../catalog/entry.js";
import type { IndexLog } from "../catalog/index-log.js";
import type { RetentionIndex } from "../catalog/retention-index.js";
import { KvKeepError } from "../errors.js";
import { statIdentity } from "../durable/files.js";
import type { CacheLocation } from "../layout/paths.js";
import { lockPathOf } from "../layout/paths.js";
import type { PathLockTable } from "../locks/path-locks.js";
import { type Logger, logLine } from "../logger.js";
import type { ManifestEntry } from "../manifest/format.js";
import { manifestNames } from "../manifest/ownership.js";
import { readLastUse, readManifest, removeCacheFiles } from "../manifest/store.js";
import type { NativeFs } from "../native/index.js";
import type { HistoryChain, PrefixCandidate, PrefixLookup } from "../prefix/prefix-index.js";
import type { EvictedCache, StoreUsage, SweepOptions, SweepResult } from "../types.js";
import { collectChunkGarbage, type ChunkGcOptions, type ChunkGcReport } from "./chunk-gc.js";
import type { RetentionHooks } from "./hooks.js";
import {
  type Candidate,
  checkLimit,
  PlanChunkRefs,
  DEFAULT_MAX_BYTES,
  DEFAULT_MAX_IDLE_MS,
  DEFAULT_SWEEP_INTERVAL_MS,
  planSweep,
  type RetentionLimits,
  stillVictim,
  type SweepPlan,
} from "./plan.js";

/** What retention needs from its store. */
export interface RetentionDeps {
  readonly root: string;
  readonly logger: Logger;
  readonly fsBackend: NativeFs;
  readonly locks: PathLockTable;
  /** Forget every in-memory layer of an evicted cache. */
  forgetCache(cachePath: string, loc: CacheLocation): void;
  prune(cachePath: string): Promise<void>;
  /** Told of each cache this store's sweeps evicted, right after its files are gone (the store's eviction events). */
  onEvicted?: ((evicted: EvictedCache) => void) | undefined;
  /**
   * Walks the root for a resync, calling `visit` for every model directory (the store's
   * recovery walk, which also removes dead writers' temp files). Default: a plain scan.
   */
  walkRoot?: ((visit: Visit) => Promise<unknown>) | undefined;
  /** The root's chunk files: each sweep ends with a chunk GC (chunk-gc.ts). None: no chunk GC. */
  chunkFiles?: ChunkFiles | undefined;
}

export interface RetentionSettings {
  maxBytes: number;
  maxIdleMs: number;
  sweepIntervalMs: number;
  evictNamed: boolean;
}

/** Knobs for tests and benchmarks; not part of the public options. */
export interface RetentionInternals extends CatalogInternals {
  /** Resync the index from the disk every this many sweeps. Default 12 (hourly at the default interval). */
  resyncEverySweeps?: number;
  /** Evictions a sweep runs at once. Default 8. */
  evictConcurrency?: number;
  /** Awaited before each eviction attempt (tests pause a sweep here). */
  beforeEvict?: (cachePath: string) => Promise<void>;
  /** Chunk GC's knobs (margin, batch, a hook after t0). */
  chunkGc?: ChunkGcOptions;
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

const DEFAULT_RESYNC_EVERY_SWEEPS = 12;
const DEFAULT_EVICT_CONCURRENCY = 8;

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

export class Retention implements RetentionHooks {
  /** The root catalog this store's sweeps plan over. */
  readonly catalog: RootCatalog;
  readonly settings: RetentionSettings;
  readonly #deps: RetentionDeps;
  readonly #resyncEverySweeps: number;
  readonly #evictConcurrency: number;
  readonly #beforeEvict: ((cachePath: string) => Promise<void>) | undefined;
  readonly #chunkGc: ChunkGcOptions;
  /** What the last chunk GC did (tests, the CLI). */
  lastChunkGc: ChunkGcReport | null = null;
  #sweeps = 0;
  /** Sweeps, one at a time. */
  #sweepChain: Promise<unknown> = Promise.resolve();
  #sweepsQueued = 0;
  #lastSweepStart = Number.NEGATIVE_INFINITY;
  #sweepsSinceResync = 0;
  #closed = false;

  constructor(deps: RetentionDeps, settings: RetentionSettings, internals: RetentionInternals = {}) {
    this.#deps = deps;
    this.settings = settings;
    this.#resyncEverySweeps = internals.resyncEverySweeps ?? DEFAULT_RESYNC_EVERY_SWEEPS;
    this.#evictConcurrency = Math.max(1, internals.evictConcurrency ?? DEFAULT_EVICT_CONCURRENCY);
    this.#beforeEvict = internals.beforeEvict;
    this.#chunkGc = internals.chunkGc ?? {};
    this.catalog = new RootCatalog(
      { root: deps.root, logger: deps.logger, fsBackend: deps.fsBackend, walkRoot: deps.walkRoot },
      { compactLogBytes: internals.compactLogBytes, beforeOpenWalk: internals.beforeOpenWalk },
    );
  }

  /** The catalog's index (tests read it). */
  get index(): RetentionIndex {
    return this.catalog.index;
  }

  /** The catalog's shared index log (tests read it). */
  get log(): IndexLog {
    return this.catalog.log;
  }

  /** Sweeps, resyncs, compactions and records applied so far. */
  get stats(): RetentionStats {
    return { sweeps: this.#sweeps, ...this.catalog.stats };
  }

  /** Build the catalog at open from the walk recovery drives (see RootCatalog.buildAtOpen). */
  buildAtOpen<T>(walk: (visit: Visit) => Promise<T>): Promise<T> {
    return this.catalog.buildAtOpen(walk);
  }

  // ── Hooks for the session and the store (RetentionHooks) ────────────────────────────

  noteCommitted(cachePath: string, entry: ManifestEntry, fingerprint: string | null): void {
    this.catalog.noteCommitted(cachePath, entry, fingerprint);
  }

  noteUsed(cachePath: string, entry: ManifestEntry): Promise<void> {
    return this.catalog.noteUsed(cachePath, entry);
  }

  noteRemoved(cachePath: string): void {
    this.catalog.noteRemoved(cachePath);
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

  usage(): Promise<StoreUsage> {
    return this.catalog.usage();
  }

  /** The catalog's prefix lookup (see RootCatalog.lookupPrefix). */
  lookupPrefix(
    scope: { scopeId: string | null; modelId: string; fingerprint: string | null; configHash: string },
    history: HistoryChain,
    options?: PrefixLookup,
  ): Promise<PrefixCandidate[]> {
    return this.catalog.lookupPrefix(scope, history, options);
  }

  /** Resolves when no sweep is running or queued. */
  async whenIdle(): Promise<void> {
    while (this.#sweepsQueued > 0) await this.#sweepChain;
  }

  /** No new background sweeps; wait for running ones, the catalog's work and the log's pending appends. */
  async close(): Promise<void> {
    this.#closed = true;
    await this.whenIdle();
    await this.catalog.close();
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
    await this.catalog.whenBuilt();
    const started = Date.now();
    this.#lastSweepStart = started;
    this.#sweeps++;
    this.#sweepsSinceResync++;
    const periodic = this.#sweepsSinceResync >= this.#resyncEverySweeps;
    if (periodic) this.#sweepsSinceResync = 0;
    const catalog = this.catalog;
    await catalog.refresh(periodic);
    await catalog.confirmRecords(); // before a compaction writes the index out as a snapshot
    await catalog.maybeCompact();
    await catalog.confirmRecords(); // what the compaction read

    const plan = planSweep(this.index.entries(), limits, Date.now());
    const removed = { files: 0 };
    const evicted = await this.#execute(plan, limits, removed);
    // After the evictions: the chunks only they referenced are unreferenced now.
    const chunks = await this.#collectChunks();
    const keptBytes = this.index.evictableBytes(limits.evictNamed);
    this.#deps.logger.debug(
      logLine("retention sweep finished", {
        evicted: evicted.length,
        freedBytes: evicted.reduce((sum, e) => sum + e.bytes, 0),
        keptBytes,
        maxBytes: limits.maxBytes,
        removedChunks: chunks.removedChunks,
        ms: Date.now() - started,
      }),
    );
    return { evicted, keptBytes, removedFiles: removed.files + chunks.removedChunks + chunks.removedTemps, removedChunks: chunks.removedChunks, removedChunkBytes: chunks.removedBytes };
  }

  /** Chunk GC after a sweep's evictions; a failure is logged and deletes nothing more (the next sweep retries). */
  async #collectChunks(): Promise<ChunkGcReport> {
    const { chunkFiles, root, fsBackend, logger } = this.#deps;
    const none: ChunkGcReport = { listed: 0, referenced: 0, removedTemps: 0, removedChunks: 0, removedBytes: 0, keptYoung: 0, removedDirs: 0 };
    if (!chunkFiles) return none;
    try {
      this.lastChunkGc = await collectChunkGarbage({ root, fsBackend, chunkFiles, logger }, this.#chunkGc);
      return this.lastChunkGc;
    } catch (error) {
      logger.warn(logLine("chunk GC failed; unreferenced chunks stay until a later sweep", { error }));
      return none;
    }
  }

  /**
   * Evict the idle candidates, then LRU ones until the budget holds; a few at a time. The
   * budget is physical: evicting a cache frees its file and the chunks no cache left names
   * (PlanChunkRefs), so evicting one of many conversations sharing a prefix frees its own
   * chunks only.
   */
  async #execute(plan: SweepPlan, limits: RetentionLimits, removed: { files: number }): Promise<EvictedCache[]> {
    const done: Array<{ candidate: Candidate; evicted: EvictedCache }> = [];
    let remaining = this.index.evictableBytes(limits.evictNamed);
    const refs = new PlanChunkRefs((context, id) => this.index.chunkRefs(context, id));
    const attempt = async ({ candidate, freed }: Planned): Promise<void> => {
      const outcome = await this.#evictOne(candidate, plan.idleCutoffMs, removed);
      if (outcome === "kept") {
        refs.giveBack(candidate.entry);
        return;
      }
      remaining -= freed; // evicted, or already gone: either way not on disk
      if (outcome !== "gone") done.push({ candidate, evicted: outcome });
    };

    const idle = plan.idle[Symbol.iterator]();
    await this.#pool(
      () => {
        const next = idle.next();
        return next.done ? null : { candidate: next.value, freed: refs.take(next.value.entry) };
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
        const planned = { candidate: next.value, freed: refs.take(next.value.entry) };
        inFlight += planned.freed;
        return planned;
      },
      async (planned) => {
        try {
          await attempt(planned);
        } finally {
          inFlight -= planned.freed;
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
  async #pool(next: () => Planned | null, work: (planned: Planned) => Promise<unknown>): Promise<void> {
    const worker = async (): Promise<void> => {
      for (let planned = next(); planned; planned = next()) await work(planned);
    };
    await Promise.all(Array.from({ length: this.#evictConcurrency }, worker));
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
      await this.#beforeEvict?.(cachePath);
      // Checked before locking too, so a vanished cache gets no lock file (or directories) made for it.
      if (!(await statIdentity(cachePath))) {
        this.index.remove(cachePath);
        return "gone";
      }
      // And a file nothing proves kvkeep's gets no lock file made beside it.
      if (!manifestNames(await readManifest(cachePath, this.#deps.fsBackend), locationOf(entry))) return this.#leaveForeign(cachePath);
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
        const [identity, diskUseMs, read] = await Promise.all([statIdentity(cachePath), readLastUse(cachePath), readManifest(cachePath, this.#deps.fsBackend)]);
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
      this.catalog.noteEvicted(cachePath, entry);
      this.#deps.forgetCache(cachePath, locationOf(entry));
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
}

/** A candidate and the physical bytes its eviction is planned to free. */
interface Planned {
  candidate: Candidate;
  freed: number;
}
