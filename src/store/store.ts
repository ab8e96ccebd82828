/**
 * The store: one cache root, its in-memory layers, its locks and its sessions.
 * Sessions change state only through the `StoreContext` it hands them.
 */
import path from "node:path";
import { KvKeepError } from "../errors.js";
import { assertRealDirs, mkdirUnderRoot, pruneEmptyDirs, statIdentity, unlinkIfExists } from "../durable/files.js";
import { claimRoot, syncRootMarker } from "../durable/root-marker.js";
import { deadWritersTemp, ownTempName } from "../durable/temp-owner.js";
import { assertCacheKey, assertModelId } from "../keys/safe-key.js";
import { type CacheLocation, cacheDirComponents, cacheKeyDir, cachePathOf, defaultRoot, parseCachePath } from "../layout/paths.js";
import { SCOPE_ID_PATTERN, scopeIdOption } from "../keys/scope.js";
import { processLocks } from "../locks/path-locks.js";
import { assertLogger, type Logger, logLine, silentLogger } from "../logger.js";
import { isOwnLockFile, provenCache } from "../manifest/ownership.js";
import { removeCacheFiles } from "../manifest/store.js";
import { loadNativeFs, type NativeBackendKind, type NativeFs } from "../native/index.js";
import { Retention, type RetentionInternals, resolveRetentionSettings } from "../retention/retention.js";
import { createSession } from "../session/session.js";
import { establishTrust } from "../session/trust.js";
import type {
  BorrowedCache,
  CacheInfo,
  DeleteTarget,
  EvictedCache,
  KvCacheSession,
  PrefixMatch,
  PrefixQuery,
  SessionOptions,
  StoreUsage,
  SweepOptions,
  SweepResult,
  TurnEvent,
} from "../types.js";
import { borrowPrefix, findPrefix } from "./borrow.js";
import type { StoreContext } from "./context.js";
import { initKey, StoreLayers, type TrustedCache } from "./layers.js";
import { type DeleteScope, Deletes } from "./deletes.js";
import { recoverRoot, type RecoveryReport } from "./recovery.js";
import { RemoteSync, type RemoteSyncInternals } from "./remote-sync.js";
import type { RemoteTier } from "../remote/types.js";
import { listKeyDirs, listScopeIds, scanKeyDir } from "./scan.js";
import { didYouMean } from "../suggest.js";

export interface KvCacheStoreOptions {
  /** The cache root. Default: `$KVKEEP_DIR`, else `$XDG_CACHE_HOME/kvkeep`, else `~/.cache/kvkeep`. */
  root?: string | undefined;
  /** Where kvkeep logs (any `{ debug, info, warn, error }`, e.g. `console` or pino). Default: silent. */
  logger?: Logger | undefined;
  /**
   * What `rollback` does (a session may override it). `"keep-committed"` (default): keep the
   * last committed state when the turn never touched `cachePath` — kvkeep's commits are
   * atomic, so a cancelled turn (a Stop button) costs the user nothing. `"clear"`: the seed
   * contract's three-layer clear — file, saved count and init flag (what the module-level
   * `createKvCacheSession` uses).
   */
  onRollback?: "clear" | "keep-committed" | undefined;
  /**
   * How a cache is checked before its first use by this store. `"size"` (default): a valid
   * manifest for this model, and a file whose size, inode and mtime match it (a checksum
   * only when those disagree). `"checksum"`: also the file's XXH64, once per file per store.
   */
  verify?: "size" | "checksum" | undefined;
  /**
   * Disk budget in bytes for the *evictable* caches — auto-mode caches, plus named
   * (custom-key) ones only with `evictNamed`. A sweep evicts the least recently used of
   * them until they fit (caches in use are never evicted, so they may stay above it).
   * Named caches are not counted against it unless `evictNamed`; `usage()` reports
   * everything on disk. Default: 4 GiB (pass e.g. 512 MiB on mobile).
   */
  maxBytes?: number | undefined;
  /**
   * Evictable caches not used for this long (ms) are evicted first. A use is a turn that
   * loaded the cache or a commit that wrote it. Default: 24 h (86 400 000).
   */
  maxIdleMs?: number | undefined;
  /**
   * A sweep starts in the background after a commit when the last one started at least
   * this long ago (ms); never on the path of `beginTurn`, and no timer is kept.
   * Default: 5 min (300 000).
   */
  sweepIntervalMs?: number | undefined;
  /**
   * Let sweeps evict named (custom-key) caches too, and count them against `maxBytes`.
   * Default: false — named caches are the user's; only auto caches are evicted.
   */
  evictNamed?: boolean | undefined;
  /**
   * A shared remote tier behind the local one, e.g. `createRedisTier({ url })` from
   * `kvkeep/redis`: commits are uploaded in the background, a local miss asks it, deletes
   * reach it. The store owns it from here on: `close()` finishes pending uploads and closes it.
   */
  remote?: RemoteTier | undefined;
  /** Uploads waiting for the remote tier at most, one per cache (the oldest is dropped past it). Default 64. */
  maxPendingUploads?: number | undefined;
  /**
   * Open a non-empty directory that is not marked as a kvkeep root (no `.kvkeep/root.json`,
   * e.g. caches copied or restored without their `.kvkeep/`) and mark it. Without it such a
   * directory is refused with ROOT_NOT_KVKEEP and left untouched. Either way kvkeep only
   * ever removes files it can prove are its own. Default: false.
   */
  adopt?: boolean | undefined;
}

/** What `store.delete` removed (the CLI prints it). @internal */
export interface DeleteReport {
  /** Caches removed (a `.bin` with its manifest). */
  caches: number;
  /** Every file removed: cache files, manifests, lock files, dead writers' temps. */
  removedFiles: number;
  /** Files in the deleted directories left in place because nothing proves them kvkeep's. */
  leftFiles: string[];
}

/** Options for tests and benchmarks; not part of the public API. @internal */
export interface InternalStoreOptions {
  retentionInternals?: RetentionInternals | undefined;
  remoteInternals?: RemoteSyncInternals | undefined;
}

/**
 * Every option the constructor accepts. Typed as a record of the options' keys, so a new
 * option fails to compile until it is listed here (and is then accepted).
 */
const KNOWN_STORE_OPTIONS: Record<keyof (KvCacheStoreOptions & InternalStoreOptions), true> = {
  root: true,
  logger: true,
  onRollback: true,
  verify: true,
  maxBytes: true,
  maxIdleMs: true,
  sweepIntervalMs: true,
  evictNamed: true,
  remote: true,
  maxPendingUploads: true,
  adopt: true,
  retentionInternals: true,
  remoteInternals: true,
};

/** A misspelled option (`maxByte`) would otherwise be ignored silently and its default used. */
function assertKnownStoreOptions(options: unknown): void {
  if (options === undefined) return;
  if (options === null || typeof options !== "object" || Array.isArray(options)) {
    throw new KvKeepError("INVALID_ARGUMENT", "openKvCacheStore takes an options object or nothing.", { argument: "options" });
  }
  const known = Object.keys(KNOWN_STORE_OPTIONS);
  for (const name of Object.keys(options)) {
    if (!Object.hasOwn(KNOWN_STORE_OPTIONS, name)) {
      throw new KvKeepError(
        "INVALID_ARGUMENT",
        `unknown store option ${JSON.stringify(name)}${didYouMean(name, known)}; the options are ${known.filter((k) => k !== "retentionInternals" && k !== "remoteInternals").join(", ")}.`,
        { argument: name },
      );
    }
  }
}

export interface KvCacheStore {
  /** The absolute cache root. */
  readonly root: string;
  /** Which file-system backend is in use: a prebuilt or locally built addon, or the JS fallback. */
  readonly backend: NativeBackendKind;
  /** Resolves when recovery at open (leftover temp files, orphan manifests) has finished. */
  readonly ready: Promise<RecoveryReport>;
  createSession(modelId: string, options?: SessionOptions): KvCacheSession;
  /**
   * Remove a key's caches for every model (or one model) in one scope (`scope`; the shared
   * space without it), on disk and in memory, or everything — every scope — with
   * `{ all: true }`. Turns open on a removed cache are rolled back at their commit
   * (`DELETED_DURING_TURN`). Only kvkeep's own files are removed.
   */
  delete(target: DeleteTarget): Promise<void>;
  /** Listen to turn events (started/settled); returns the unsubscribe function. */
  onTurnEvent(listener: (event: TurnEvent) => void): () => void;
  /**
   * Listen to evictions: `listener` gets each cache this store's retention sweeps remove —
   * background sweeps after commits and `store.sweep()` alike — right after its files are
   * gone, before the sweep resolves (the same `EvictedCache` the sweep's result lists).
   * Evictions by other stores or processes on the root (another app, `kvkeep gc`) are not
   * reported, nor are deletes. A listener that throws is logged and does not stop the sweep.
   * Returns the unsubscribe function.
   */
  onEviction(listener: (evicted: EvictedCache) => void): () => void;
  /**
   * Run `use` on a committed cache outside any turn — e.g. to preload it into an idle
   * engine — while holding its lock, only if it is trusted for `fingerprint` (the checks
   * `beginTurn` makes; it never primes, and removes an untrusted file). Never waits: a cache
   * a turn holds (here or in another process) resolves to null, as does a missing one.
   */
  useCache<T>(cachePath: string, options: { fingerprint?: string | null }, use: (cache: CacheInfo) => Promise<T>): Promise<T | null>;
  /**
   * Where `cachePath` sits in this root's layout (scope id, cache key, model id, config hash),
   * or null when it is not a cache path of this root. Reads nothing. For engines, which must
   * not parse kvkeep's layout themselves (e.g. to preload only their own model's caches).
   */
  locateCache(cachePath: string): CacheLocation | null;
  /**
   * The identity (size, inode, mtime in ns) of the file at `cachePath` now, or null when no
   * regular file is there — the identity `CommitOutcome.file` records, so an engine can tell
   * whether a cache is still exactly the state it holds in memory.
   */
  cacheFileIdentity(cachePath: string): Promise<{ size: number; ino: string; mtimeNs: string } | null>;
  /**
   * Run one retention sweep now (after any sweep already running), with the store's limits
   * or the given overrides: evictable caches idle for longer than `maxIdleMs` first, then
   * the least recently used until they fit in `maxBytes`. A cache a turn holds — in this
   * process or another — is skipped, never waited for. Each eviction is logged (info).
   */
  sweep(options?: SweepOptions): Promise<SweepResult>;
  /** Bytes and count of every cache under the root (auto and named), from the store's index. */
  usage(): Promise<StoreUsage>;
  /**
   * The committed cache of this model (fingerprint) and config whose conversation shares the
   * most leading messages with `query.history` — a longer one counts: an engine cuts it back
   * at the first differing token — or null. Answered from the prefix index (no directory
   * scan; other processes' commits included), so it is a hint: `borrowPrefix` re-checks it.
   * Never waits for a walk of the root: until the store's open-time walk ends, it answers from
   * the shared index log's records.
   */
  findPrefix(query: PrefixQuery): Promise<PrefixMatch | null>;
  /**
   * Lend the best source for `query` to `use` — e.g. `(src) => sequence.loadStateFromFile(src.loadPath)`
   * — and resolve to `{ value }` with what `use` returned, or null when no cache qualifies or
   * every candidate is in use (never waits), gone, or not what the index said. The source is
   * read-only: its file, manifest, saved count and retention position never change; it is
   * held only while `use` runs. Errors thrown by `use` pass through.
   */
  borrowPrefix<T>(query: PrefixQuery, use: (source: BorrowedCache) => Promise<T>): Promise<{ value: T } | null>;
  /**
   * Stop accepting turns and wait for background work (recovery, a running sweep, the
   * index log's pending appends). Open turns may still commit or roll back.
   */
  close(): Promise<void>;
}


export class KvCacheStoreImpl implements KvCacheStore {
  readonly root: string;
  readonly backend: NativeBackendKind;
  readonly ready: Promise<RecoveryReport>;
  readonly layers = new StoreLayers();
  /** @internal retention's index, log and stats (tests read them). */
  readonly retention: Retention;
  readonly #ctx: StoreContext;
  readonly #listeners = new Set<(event: TurnEvent) => void>();
  readonly #evictionListeners = new Set<(evicted: EvictedCache) => void>();
  /**
   * Deletes, recorded in memory and in the root's shared delete log. A turn marks them
   * when it takes its lock; a commit that finds a later delete covering its cache refuses
   * (DELETED_DURING_TURN) — also when the delete ran in another process, during the commit
   * itself, or while the turn was still beginning.
   */
  readonly #deletes: Deletes;
  /** The fsyncs of a root marker this store wrote (close waits for them). */
  readonly #markerSynced: Promise<void>;
  #closed = false;

  constructor(options: KvCacheStoreOptions & InternalStoreOptions = {}) {
    assertKnownStoreOptions(options);
    if (options.logger !== undefined) assertLogger(options.logger, "logger");
    if (options.root !== undefined && (typeof options.root !== "string" || options.root.length === 0)) {
      throw new KvKeepError("INVALID_ARGUMENT", "options.root must be a non-empty path.", { argument: "root" });
    }
    if (options.onRollback !== undefined && options.onRollback !== "clear" && options.onRollback !== "keep-committed") {
      throw new KvKeepError("INVALID_ARGUMENT", `options.onRollback must be "clear" or "keep-committed".`, {
        argument: "onRollback",
      });
    }
    if (options.verify !== undefined && options.verify !== "size" && options.verify !== "checksum") {
      throw new KvKeepError("INVALID_ARGUMENT", `options.verify must be "size" or "checksum".`, { argument: "verify" });
    }
    if (options.adopt !== undefined && typeof options.adopt !== "boolean") {
      throw new KvKeepError("INVALID_ARGUMENT", "options.adopt must be a boolean.", { argument: "adopt" });
    }
    const remote = checkRemoteOptions(options);
    const retentionSettings = resolveRetentionSettings(options);
    this.root = path.resolve(options.root ?? defaultRoot());
    const logger = options.logger ?? silentLogger;
    const nfs: NativeFs = loadNativeFs(logger);
    // Before anything else touches the directory: a foreign one is refused as it is.
    let markerWritten = true;
    const claimed = claimRoot(this.root, {
      adopt: options.adopt === true,
      how: "open it with openKvCacheStore({ adopt: true }) (or a kvkeep command with --adopt)",
      onWriteFailed: (error) => {
        markerWritten = false;
        logger.warn(logLine("could not mark the cache root (.kvkeep/root.json); it is used as it is", { root: this.root, error }));
      },
    });
    this.#markerSynced =
      claimed.kind === "marked" || !markerWritten
        ? Promise.resolve()
        : syncRootMarker(nfs, this.root).catch((error: unknown) => logger.debug(logLine("could not sync the root marker", { error })));
    this.backend = nfs.kind;
    const locks = processLocks();
    const layers = this.layers;
    const root = this.root;
    const forgetCache = (cachePath: string, init: string): void => layers.forget(cachePath, init);
    const prune = (cachePath: string): Promise<void> =>
      pruneEmptyDirs(root, path.dirname(cachePath), (dir) => layers.isDirActive(dir));
    const deletes = new Deletes(root, nfs, logger);
    this.#deletes = deletes;
    const onEvicted = (evicted: EvictedCache): void => {
      for (const listener of this.#evictionListeners) {
        try {
          listener(Object.freeze({ ...evicted }));
        } catch (error) {
          logger.warn(logLine("eviction listener threw", { cacheKey: evicted.cacheKey, error }));
        }
      }
    };
    const retention = new Retention(
      { root, logger, nfs, locks, forgetCache, prune, onEvicted, walkRoot: (visit) => recoverRoot(this.#ctx, visit) },
      retentionSettings,
      options.retentionInternals,
    );
    this.retention = retention;
    this.#ctx = {
      root,
      logger,
      nfs,
      locks,
      layers,
      onRollback: options.onRollback ?? "keep-committed",
      verify: options.verify ?? "size",
      assertOpen: () => {
        if (this.#closed) throw new KvKeepError("STORE_CLOSED", "this kvkeep store was closed; open a new one.");
      },
      ensureCacheDir: async (loc: CacheLocation) => {
        await mkdirUnderRoot(nfs, root, ...cacheDirComponents(loc));
      },
      forgetCache,
      prune,
      removeCache: async (cachePath) => {
        const removed = await removeCacheFiles(cachePath);
        retention.noteRemoved(cachePath);
        const loc = parseCachePath(root, cachePath);
        if (loc) forgetCache(cachePath, initKey(loc));
        return removed;
      },
      releaseCache: async (lease, cachePath, removed) => {
        lease?.release({ removeLockFile: removed });
        layers.unrefDir(cachePath);
        if (removed) await prune(cachePath);
      },
      deleteMark: () => deletes.mark(),
      deletedSince: (cachePath, mark) => deletes.coveredSince(cachePath, mark),
      emit: (event) => {
        for (const listener of this.#listeners) {
          try {
            listener(event);
          } catch (error) {
            logger.warn(logLine("turn event listener threw", { type: event.type, error }));
          }
        }
      },
      retention,
      remote: remote && new RemoteSync(remote, () => this.#ctx, { maxPendingUploads: options.maxPendingUploads, ...options.remoteInternals }),
    };
    remote?.setLogger(logger);
    // Deletes other stores on this root left pending for the tier are honoured (and sent) from now on.
    this.#ctx.remote?.start();
    // One walk of the root at open: recovery, and the retention index built from it.
    this.ready = retention.buildAtOpen((visit) => recoverRoot(this.#ctx, visit)).catch((error: unknown) => {
      logger.warn(logLine("recovery at open failed; caches are still verified before use", { error }));
      return { removedTemps: 0, removedManifests: 0, skippedBusy: 0 };
    });
  }

  createSession(modelId: string, options?: SessionOptions): KvCacheSession {
    this.#ctx.assertOpen();
    return createSession(this.#ctx, modelId, options);
  }

  onTurnEvent(listener: (event: TurnEvent) => void): () => void {
    if (typeof listener !== "function") {
      throw new KvKeepError("INVALID_ARGUMENT", "onTurnEvent needs a function.", { argument: "listener" });
    }
    this.#listeners.add(listener);
    return () => this.#listeners.delete(listener);
  }

  onEviction(listener: (evicted: EvictedCache) => void): () => void {
    if (typeof listener !== "function") {
      throw new KvKeepError("INVALID_ARGUMENT", "onEviction needs a function.", { argument: "listener" });
    }
    // A wrapper per call: subscribing one function twice gives two subscriptions, each undone by its own call.
    const entry = (evicted: EvictedCache): void => listener(evicted);
    this.#evictionListeners.add(entry);
    return () => {
      this.#evictionListeners.delete(entry);
    };
  }

  async delete(target: DeleteTarget): Promise<void> {
    await this.deleteReporting(target);
  }

  /** `delete`, resolving to what it removed and what it left (the CLI's summary). @internal */
  async deleteReporting(target: DeleteTarget): Promise<DeleteReport> {
    const ctx = this.#ctx;
    if (!target || typeof target !== "object") {
      throw new KvKeepError("INVALID_ARGUMENT", "delete needs { kvCacheKey, modelId?, scope? } or { all: true }.", {
        argument: "target",
      });
    }
    let recorded: DeleteScope[];
    if ("all" in target) {
      if (target.all !== true) {
        throw new KvKeepError("INVALID_ARGUMENT", "delete({ all }) needs all: true.", { argument: "all" });
      }
      // A caller meaning "everything of this scope" must not get everything of every scope.
      if ("scope" in target || "scopeId" in target) {
        throw new KvKeepError("INVALID_ARGUMENT", "delete({ all: true }) removes every scope's caches and takes no scope; delete one scope's keys by name instead.", {
          argument: "scope",
        });
      }
      recorded = [{}];
    } else {
      assertCacheKey(target.kvCacheKey);
      if (target.modelId !== undefined) assertModelId(target.modelId);
      recorded = [{ scopeId: deleteScopeId(target), cacheKey: target.kvCacheKey, modelId: target.modelId }];
    }
    ctx.assertOpen();
    const report: DeleteReport = { caches: 0, removedFiles: 0, leftFiles: [] };
    // Recorded before any file goes (in memory and in the shared log), so a turn in any
    // process that took its lock before this point sees it at its commit; and again when
    // everything is gone, so a turn that took its lock while this ran sees it too.
    await this.#deletes.record(recorded, "start");
    try {
      const keys: Array<{ scopeId: string | null; cacheKey: string; modelId?: string | undefined }> = [];
      if ("all" in target) {
        for (const scopeId of [null, ...(await listScopeIds(this.root))]) {
          for (const cacheKey of await listKeyDirs(this.root, scopeId)) keys.push({ scopeId, cacheKey });
        }
      } else keys.push(recorded[0] as { scopeId: string | null; cacheKey: string; modelId?: string });
      for (const key of keys) await this.#removeKey(key.scopeId, key.cacheKey, key.modelId, report);
    } finally {
      await this.#deletes.record(recorded, "end");
    }
    if ("all" in target) this.layers.clear();
    // Remote hook: the fleet's copy goes too, with a tombstone against uploads in flight.
    const removed = recorded[0]!;
    await ctx.remote?.afterDelete(
      "all" in target ? { all: true } : { scopeId: removed.scopeId ?? null, kvCacheKey: removed.cacheKey!, modelId: removed.modelId },
    );
    return report;
  }

  /**
   * Remove every file of a key (one model, or all) in one scope's space that is provably
   * kvkeep's, and what memory knows of it: caches and manifests whose manifest names their
   * place (their scope included), their (empty) lock files, dead writers' temps
   * (src/manifest/ownership.ts). Anything else stays, logged, and a directory is pruned only
   * when this removed something from it.
   */
  async #removeKey(scopeId: string | null, cacheKey: string, modelId: string | undefined, report: DeleteReport): Promise<void> {
    const ctx = this.#ctx;
    const keyDir = cacheKeyDir(this.root, cacheKey, scopeId);
    const removedDir = modelId === undefined ? keyDir : path.join(keyDir, modelId);
    for (const modelDir of await scanKeyDir(this.root, cacheKey, modelId, false, scopeId)) {
      const removedBefore = report.removedFiles;
      // Proven before anything goes: removing a cache takes its manifest, the proof, with it.
      const proven = new Set<string>();
      for (const file of modelDir.files) {
        if ((file.kind === "cache" || file.kind === "manifest") && !proven.has(file.configHash!)) {
          const loc = { scopeId, cacheKey: modelDir.cacheKey, modelId: modelDir.modelId, configHash: file.configHash! };
          if (await provenCache(cachePathOf(this.root, loc), loc, ctx.nfs)) proven.add(file.configHash!);
        }
      }
      const left = (file: { path: string }): void => {
        report.leftFiles.push(file.path);
        ctx.logger.warn(logLine("delete left a file that is not provably kvkeep's", { path: file.path }));
      };
      for (const file of modelDir.files) {
        if (file.kind === null) {
          left(file);
        } else if (file.kind === "lock") {
          // The lock of a cache proven here; an empty file alone named `x.lock` may be someone's mutex.
          if (!proven.has(file.configHash!) || !(await isOwnLockFile(file.path))) {
            left(file);
            continue;
          }
          const cachePath = cachePathOf(this.root, { scopeId, cacheKey: modelDir.cacheKey, modelId: modelDir.modelId, configHash: file.configHash! });
          if (!ctx.nfs.crossProcessLocks) {
            if (await unlinkIfExists(file.path)) report.removedFiles++;
          } else {
            // Only an unheld lock file may go: a holder must keep excluding newcomers.
            const lease = ctx.locks.tryAcquire(cachePath);
            if (lease) {
              lease.release({ removeLockFile: true });
              report.removedFiles++;
            }
          }
        } else if (file.kind === "cache") {
          if (!proven.has(file.configHash!)) {
            left(file);
            continue;
          }
          const files = await ctx.removeCache(file.path);
          report.removedFiles += files;
          report.caches++;
        } else if (file.kind === "temp") {
          // A live writer's temp belongs to a turn in flight: it ends that turn itself (its
          // commit sees this delete and refuses). A dead writer's is a leftover.
          if (!ownTempName(file.name)) left(file);
          else if (deadWritersTemp(file.name) && (await unlinkIfExists(file.path))) report.removedFiles++;
        } else if (!proven.has(file.configHash!)) {
          left(file);
        } else if (await unlinkIfExists(file.path)) {
          report.removedFiles++; // a manifest whose cache went before it (or is gone)
        }
      }
      ctx.layers.forgetUnder(modelDir.dir, () => false);
      if (report.removedFiles > removedBefore) await pruneEmptyDirs(this.root, modelDir.dir, (dir) => ctx.layers.isDirActive(dir));
    }
    ctx.layers.forgetUnder(
      removedDir,
      (loc) => loc.scopeId === scopeId && loc.cacheKey === cacheKey && (modelId === undefined || loc.modelId === modelId),
    );
  }

  async sweep(options?: SweepOptions): Promise<SweepResult> {
    this.#ctx.assertOpen();
    return this.retention.sweep(options);
  }

  async usage(): Promise<StoreUsage> {
    this.#ctx.assertOpen();
    return this.retention.usage();
  }

  findPrefix(query: PrefixQuery): Promise<PrefixMatch | null> {
    return findPrefix(this.#ctx, this.retention, query);
  }

  borrowPrefix<T>(query: PrefixQuery, use: (source: BorrowedCache) => Promise<T>): Promise<{ value: T } | null> {
    return borrowPrefix(this.#ctx, this.retention, query, use);
  }

  async useCache<T>(
    cachePath: string,
    options: { fingerprint?: string | null },
    use: (cache: CacheInfo) => Promise<T>,
  ): Promise<T | null> {
    const ctx = this.#ctx;
    ctx.assertOpen();
    const loc = typeof cachePath === "string" ? parseCachePath(this.root, cachePath) : null;
    if (!loc) {
      throw new KvKeepError("INVALID_ARGUMENT", `${String(cachePath)} is not a cache path of this store's root.`, {
        argument: "cachePath",
      });
    }
    const resolved = cachePathOf(this.root, loc);
    // Never through a symlink planted below the root, and never creating directories:
    // a missing level means there is no cache (UNSAFE_PATH for a symlink or file).
    if (!(await assertRealDirs(this.root, cacheDirComponents(loc)))) return null;
    const lease = ctx.locks.tryAcquire(resolved);
    if (!lease) return null;
    ctx.layers.refDir(resolved);
    let trusted: TrustedCache | null = null;
    try {
      ({ trusted } = await establishTrust(ctx, resolved, loc, options.fingerprint ?? null));
      if (!trusted) return null;
      const result = await use({ cachePath: resolved, messageCount: trusted.messageCount, tokenCount: trusted.tokenCount, bytes: trusted.size });
      await ctx.retention.noteUsed(resolved, trusted);
      return result;
    } finally {
      await ctx.releaseCache(lease, resolved, trusted === null);
    }
  }

  locateCache(cachePath: string): CacheLocation | null {
    return typeof cachePath === "string" ? parseCachePath(this.root, cachePath) : null;
  }

  cacheFileIdentity(cachePath: string): Promise<{ size: number; ino: string; mtimeNs: string } | null> {
    return statIdentity(cachePath);
  }

  async close(): Promise<void> {
    this.#closed = true;
    await this.ready;
    await this.#markerSynced;
    // Remote hook: pending uploads finish before the tier closes.
    await this.#ctx.remote?.close();
    await this.retention.close();
  }
}

/** The scope id a keyed delete names: by `scope`, by `scopeId`, or null (the shared space). */
function deleteScopeId(target: { scope?: string | undefined; scopeId?: string | undefined }): string | null {
  if (target.scopeId === undefined) return scopeIdOption(target.scope);
  if (target.scope !== undefined) {
    throw new KvKeepError("INVALID_ARGUMENT", "delete takes scope or scopeId, not both.", { argument: "scopeId" });
  }
  if (typeof target.scopeId !== "string" || !SCOPE_ID_PATTERN.test(target.scopeId)) {
    throw new KvKeepError("INVALID_ARGUMENT", "scopeId must be a scope's id: 32 hex characters, as kvkeep scan shows it.", { argument: "scopeId" });
  }
  return target.scopeId;
}

function checkRemoteOptions(options: KvCacheStoreOptions): RemoteTier | null {
  const { remote, maxPendingUploads } = options;
  if (maxPendingUploads !== undefined && (!Number.isSafeInteger(maxPendingUploads) || maxPendingUploads < 1)) {
    throw new KvKeepError("INVALID_ARGUMENT", "options.maxPendingUploads must be a positive integer.", { argument: "maxPendingUploads" });
  }
  if (remote === undefined) return null;
  const methods = ["reserve", "upload", "has", "fetchTo", "lookupPrefix", "remove", "close", "setLogger"] as const;
  if (!remote || typeof remote !== "object" || methods.some((m) => typeof remote[m] !== "function")) {
    throw new KvKeepError("INVALID_ARGUMENT", "options.remote must be a remote tier, e.g. createRedisTier({ url }) from kvkeep/redis.", {
      argument: "remote",
    });
  }
  return remote;
}

export function openKvCacheStore(options?: KvCacheStoreOptions): KvCacheStore {
  return new KvCacheStoreImpl(options);
}
