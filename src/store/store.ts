/**
 * The store: one cache root, its in-memory layers, its locks and its sessions.
 * Sessions change state only through the `StoreContext` it hands them.
 */
import path from "node:path";
import { KvKeepError } from "../errors.js";
import { assertRealDirs, mkdirUnderRoot, pruneEmptyDirs, unlinkIfExists } from "../durable/files.js";
import { assertCacheKey, assertModelId } from "../keys/safe-key.js";
import { type CacheLocation, cacheKeyDir, cachePathOf, defaultRoot, parseCachePath } from "../layout/paths.js";
import { processLocks } from "../locks/path-locks.js";
import { assertLogger, type Logger, logLine, silentLogger } from "../logger.js";
import { removeCacheFiles } from "../manifest/store.js";
import { loadNativeFs, type NativeBackendKind, type NativeFs } from "../native/index.js";
import { Retention, type RetentionInternals, resolveRetentionSettings } from "../retention/retention.js";
import { createSession } from "../session/session.js";
import { establishTrust } from "../session/trust.js";
import type { CacheInfo, DeleteTarget, KvCacheSession, SessionOptions, StoreUsage, SweepOptions, SweepResult, TurnEvent } from "../types.js";
import type { StoreContext } from "./context.js";
import { initKey, StoreLayers, type TrustedCache } from "./layers.js";
import { recoverRoot, type RecoveryReport } from "./recovery.js";
import { listKeyDirs, scanKeyDir } from "./scan.js";
import { didYouMean } from "../suggest.js";

export interface KvCacheStoreOptions {
  /** The cache root. Default: `$KVKEEP_DIR`, else `$XDG_CACHE_HOME/kvkeep`, else `~/.cache/kvkeep`. */
  root?: string | undefined;
  /** Where kvkeep logs (any `{ debug, info, warn, error }`, e.g. `console` or pino). Default: silent. */
  logger?: Logger | undefined;
  /**
   * What `rollback` does. `"clear"` (default): the contract's three-layer clear — file,
   * saved count and init flag. `"keep-committed"`: keep the last committed state when the
   * turn never touched `cachePath`, so a cancelled turn costs the user nothing.
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
}

/** Options for tests and benchmarks; not part of the public API. @internal */
export interface InternalStoreOptions {
  retentionInternals?: RetentionInternals | undefined;
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
  retentionInternals: true,
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
        `unknown store option ${JSON.stringify(name)}${didYouMean(name, known)}; the options are ${known.filter((k) => k !== "retentionInternals").join(", ")}.`,
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
   * Remove a key's caches for every model (or one model), on disk and in memory, or
   * everything with `{ all: true }`. Turns open on a removed cache are rolled back at
   * their commit (`DELETED_DURING_TURN`). Only kvkeep's own files are removed.
   */
  delete(target: DeleteTarget): Promise<void>;
  /** Listen to turn events (started/settled); returns the unsubscribe function. */
  onTurnEvent(listener: (event: TurnEvent) => void): () => void;
  /**
   * Run `use` on a committed cache outside any turn — e.g. to preload it into an idle
   * engine — while holding its lock, only if it is trusted for `fingerprint` (the checks
   * `beginTurn` makes; it never primes, and removes an untrusted file). Never waits: a cache
   * a turn holds (here or in another process) resolves to null, as does a missing one.
   */
  useCache<T>(cachePath: string, options: { fingerprint?: string | null }, use: (cache: CacheInfo) => Promise<T>): Promise<T | null>;
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
  /**
   * Deletes so far, and the last one that covered each scope directory (the root for
   * `{ all: true }`). A turn records the generation when it takes its lock; a commit that
   * finds a later delete covering its cache refuses (DELETED_DURING_TURN) — also when the
   * delete ran during the commit itself, or while the turn was still beginning.
   */
  #deleteGeneration = 0;
  readonly #deletedScopes = new Map<string, number>();
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
    const retentionSettings = resolveRetentionSettings(options);
    this.root = path.resolve(options.root ?? defaultRoot());
    const logger = options.logger ?? silentLogger;
    const nfs: NativeFs = loadNativeFs(logger);
    this.backend = nfs.kind;
    const locks = processLocks();
    const layers = this.layers;
    const root = this.root;
    const forgetCache = (cachePath: string, init: string): void => layers.forget(cachePath, init);
    const prune = (cachePath: string): Promise<void> =>
      pruneEmptyDirs(root, path.dirname(cachePath), (dir) => layers.isDirActive(dir));
    const deletedScopes = this.#deletedScopes;
    const retention = new Retention(
      { root, logger, nfs, locks, forgetCache, prune },
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
      onRollback: options.onRollback ?? "clear",
      verify: options.verify ?? "size",
      assertOpen: () => {
        if (this.#closed) throw new KvKeepError("STORE_CLOSED", "this kvkeep store was closed; open a new one.");
      },
      ensureCacheDir: async (loc: CacheLocation) => {
        await mkdirUnderRoot(nfs, root, loc.cacheKey, loc.modelId);
      },
      forgetCache,
      prune,
      removeCache: async (cachePath) => {
        await removeCacheFiles(cachePath);
        retention.noteRemoved(cachePath);
        const loc = parseCachePath(root, cachePath);
        if (loc) forgetCache(cachePath, initKey(loc.modelId, loc.configHash, loc.cacheKey));
      },
      releaseCache: async (lease, cachePath, removed) => {
        lease?.release({ removeLockFile: removed });
        layers.unrefDir(cachePath);
        if (removed) await prune(cachePath);
      },
      deletionGeneration: () => this.#deleteGeneration,
      deletedSince: (cachePath, generation) => {
        const modelDir = path.dirname(cachePath);
        for (const dir of [root, path.dirname(modelDir), modelDir]) {
          if ((deletedScopes.get(dir) ?? -1) > generation) return true;
        }
        return false;
      },
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
    };
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

  async delete(target: DeleteTarget): Promise<void> {
    const ctx = this.#ctx;
    if (!target || typeof target !== "object") {
      throw new KvKeepError("INVALID_ARGUMENT", "delete needs { kvCacheKey, modelId? } or { all: true }.", {
        argument: "target",
      });
    }
    let scopes: Array<{ cacheKey: string; modelId?: string }>;
    if ("all" in target) {
      if (target.all !== true) {
        throw new KvKeepError("INVALID_ARGUMENT", "delete({ all }) needs all: true.", { argument: "all" });
      }
      scopes = (await listKeyDirs(this.root)).map((cacheKey) => ({ cacheKey }));
    } else {
      assertCacheKey(target.kvCacheKey);
      if (target.modelId !== undefined) assertModelId(target.modelId);
      scopes = [{ cacheKey: target.kvCacheKey, ...(target.modelId !== undefined ? { modelId: target.modelId } : {}) }];
    }
    // Recorded before any file goes, so a commit racing this delete sees it afterwards.
    const generation = ++this.#deleteGeneration;
    if ("all" in target) this.#deletedScopes.set(this.root, generation);
    for (const scope of scopes) {
      const scopeDir =
        scope.modelId === undefined ? cacheKeyDir(this.root, scope.cacheKey) : path.join(this.root, scope.cacheKey, scope.modelId);
      this.#deletedScopes.set(scopeDir, generation);
      for (const modelDir of await scanKeyDir(this.root, scope.cacheKey, scope.modelId)) {
        for (const file of modelDir.files) {
          if (file.kind === null) {
            ctx.logger.warn(logLine("delete left a file that is not kvkeep's", { path: file.path }));
          } else if (file.kind === "lock") {
            const cachePath = cachePathOf(this.root, { cacheKey: modelDir.cacheKey, modelId: modelDir.modelId, configHash: file.configHash! });
            if (!ctx.nfs.crossProcessLocks) {
              await unlinkIfExists(file.path);
            } else {
              // Only an unheld lock file may go: a holder must keep excluding newcomers.
              ctx.locks.tryAcquire(cachePath)?.release({ removeLockFile: true });
            }
          } else if (file.kind === "cache") {
            await ctx.removeCache(file.path);
          } else {
            await unlinkIfExists(file.path);
          }
        }
        ctx.layers.forgetUnder(modelDir.dir, () => false);
        await pruneEmptyDirs(this.root, modelDir.dir, (dir) => ctx.layers.isDirActive(dir));
      }
      ctx.layers.forgetUnder(
        scopeDir,
        (modelId, _configHash, cacheKey) => cacheKey === scope.cacheKey && (scope.modelId === undefined || modelId === scope.modelId),
      );
    }
    if ("all" in target) this.layers.clear();
  }

  async sweep(options?: SweepOptions): Promise<SweepResult> {
    this.#ctx.assertOpen();
    return this.retention.sweep(options);
  }

  async usage(): Promise<StoreUsage> {
    this.#ctx.assertOpen();
    return this.retention.usage();
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
    if (!(await assertRealDirs(this.root, [loc.cacheKey, loc.modelId]))) return null;
    const lease = ctx.locks.tryAcquire(resolved);
    if (!lease) return null;
    ctx.layers.refDir(resolved);
    let trusted: TrustedCache | null = null;
    try {
      trusted = await establishTrust(ctx, resolved, loc, options.fingerprint ?? null);
      if (!trusted) return null;
      const result = await use({ cachePath: resolved, messageCount: trusted.messageCount, tokenCount: trusted.tokenCount, bytes: trusted.size });
      await ctx.retention.noteUsed(resolved, trusted);
      return result;
    } finally {
      await ctx.releaseCache(lease, resolved, trusted === null);
    }
  }

  async close(): Promise<void> {
    this.#closed = true;
    await this.ready;
    await this.retention.close();
  }
}

export function openKvCacheStore(options?: KvCacheStoreOptions): KvCacheStore {
  return new KvCacheStoreImpl(options);
}
