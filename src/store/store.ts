/** The store core (the facade, src/facade/kvkeep-store.ts, adds the sessions). */
import path from "node:path";
import { isKvKeepError, KvKeepError } from "../errors.js";
import { ChunkFiles } from "../chunkfiles/chunk-files.js";
import { assertRealDirs, mkdirUnderRoot, pruneEmptyDirs, statIdentity } from "../durable/files.js";
import { claimRoot, syncRootMarker } from "../durable/root-marker.js";
import { type CacheLocation, cacheDirComponents, cachePathOf, parseCachePath } from "../layout/paths.js";
import { processLocks } from "../locks/path-locks.js";
import { logLine } from "../logger.js";
import { removeCacheFiles } from "../manifest/store.js";
import { loadNativeFs, type NativeBackendKind, type NativeFs } from "../native/index.js";
import { Retention } from "../retention/retention.js";
import { establishTrust } from "./trust.js";
import type { BorrowedCache, CacheInfo, DeleteTarget, EvictedCache, PrefixMatch, PrefixQuery, StoreUsage, SweepOptions, SweepResult, TurnEvent } from "../types.js";
import { borrowPrefix, findPrefix } from "./borrow.js";
import { type ChunkedSource, chunkedSource, MAX_TAIL_BYTES, withJoinedState } from "./chunked-load.js";
import { type DeleteReport, deleteReporting } from "./delete.js";
import { type InternalStoreOptions, type KvCacheStoreOptions, resolveStoreOptions } from "./options.js";
import type { StoreContext } from "./context.js";
import { initKey, StoreLayers, type TrustedCache } from "./layers.js";
import { Deletes } from "./deletes.js";
import { recoverRoot, type RecoveryReport } from "./recovery.js";
import { RemoteSync } from "./remote-sync.js";

/**
 * The store core: one cache root, its in-memory layers, its locks, its catalog and sweeper,
 * its remote tier. Sessions (src/session/) change state only through the `StoreContext` it
 * gives the facade (src/facade/kvkeep-store.ts), which adds `createSession`.
 */
export class StoreCore {
  readonly root: string;
  readonly backend: NativeBackendKind;
  readonly ready: Promise<RecoveryReport>;
  readonly layers = new StoreLayers();
  /** @internal retention's index, log and stats (tests read them). */
  readonly retention: Retention;
  /** What sessions may use of this store (the facade hands it to them). */
  protected readonly context: StoreContext;
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
    const resolved = resolveStoreOptions(options);
    const { logger, remote } = resolved;
    this.root = resolved.root;
    const fsBackend: NativeFs = loadNativeFs(logger);
    // Before anything else touches the directory: a foreign one is refused as it is.
    let markerWritten = true;
    const claimed = claimRoot(this.root, {
      adopt: resolved.adopt,
      how: "open it with openKvCacheStore({ adopt: true }) (or a kvkeep command with --adopt)",
      onWriteFailed: (error) => {
        markerWritten = false;
        logger.warn(logLine("could not mark the cache root (.kvkeep/root.json); it is used as it is", { root: this.root, error }));
      },
    });
    this.#markerSynced =
      claimed.kind === "marked" || !markerWritten
        ? Promise.resolve()
        : syncRootMarker(fsBackend, this.root).catch((error: unknown) => logger.debug(logLine("could not sync the root marker", { error })));
    this.backend = fsBackend.kind;
    const locks = processLocks();
    const layers = this.layers;
    const root = this.root;
    const forgetCache = (cachePath: string, init: string): void => layers.forget(cachePath, init);
    const prune = (cachePath: string): Promise<void> =>
      pruneEmptyDirs(root, path.dirname(cachePath), (dir) => layers.isDirActive(dir));
    const deletes = new Deletes(root, fsBackend, logger);
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
    const chunkFiles = new ChunkFiles(root, fsBackend);
    const retention = new Retention(
      { root, logger, fsBackend, locks, chunkFiles, forgetCache: (cachePath, loc) => forgetCache(cachePath, initKey(loc)), prune, onEvicted, walkRoot: (visit) => recoverRoot(this.context, visit) },
      resolved.retention,
      options.retentionInternals,
    );
    this.retention = retention;
    this.context = {
      root,
      logger,
      fsBackend,
      chunkFiles,
      locks,
      layers,
      onRollback: resolved.onRollback,
      verify: resolved.verify,
      assertOpen: () => {
        if (this.#closed) throw new KvKeepError("STORE_CLOSED", "this kvkeep store was closed; open a new one.");
      },
      ensureCacheDir: async (loc: CacheLocation) => {
        await mkdirUnderRoot(fsBackend, root, ...cacheDirComponents(loc));
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
      remote: remote && new RemoteSync(remote, () => this.context, { maxPendingUploads: options.maxPendingUploads, ...options.remoteInternals }),
    };
    remote?.setLogger(logger);
    // Deletes other stores on this root left pending for the tier are honoured (and sent) from now on.
    this.context.remote?.start();
    // One walk of the root at open: recovery, and the retention index built from it.
    this.ready = retention.buildAtOpen((visit) => recoverRoot(this.context, visit)).catch((error: unknown) => {
      logger.warn(logLine("recovery at open failed; caches are still verified before use", { error }));
      return { removedTemps: 0, removedManifests: 0, skippedBusy: 0 };
    });
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
  deleteReporting(target: DeleteTarget): Promise<DeleteReport> {
    return deleteReporting(this.context, this.#deletes, target);
  }

  async sweep(options?: SweepOptions): Promise<SweepResult> {
    this.context.assertOpen();
    return this.retention.sweep(options);
  }

  async usage(): Promise<StoreUsage> {
    this.context.assertOpen();
    return this.retention.usage();
  }

  findPrefix(query: PrefixQuery): Promise<PrefixMatch | null> {
    return findPrefix(this.context, this.retention.catalog, query);
  }

  borrowPrefix<T>(query: PrefixQuery, use: (source: BorrowedCache) => Promise<T>): Promise<{ value: T } | null> {
    return borrowPrefix(this.context, this.retention.catalog, query, use);
  }

  async useCache<T>(
    cachePath: string,
    options: { fingerprint?: string | null },
    use: (cache: CacheInfo) => Promise<T>,
  ): Promise<T | null> {
    const ctx = this.context;
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
      const info = {
        cachePath: resolved,
        messageCount: trusted.messageCount,
        tokenCount: trusted.tokenCount,
        bytes: trusted.size,
      };
      let result: T;
      if (!trusted.chunks) {
        result = await use({ ...info, layout: "whole", loadPath: resolved });
      } else {
        const source = await this.#chunkedSourceOf(resolved, trusted);
        if (!source) {
          trusted = null; // removed: its lock file goes with the lease
          return null;
        }
        let used = false;
        try {
          result = await withJoinedState(ctx, source, undefined, (loadPath) => {
            used = true;
            return use({ ...info, layout: "chunked", loadPath });
          });
        } catch (error) {
          if (used || !isKvKeepError(error) || (error.code !== "CHUNK_MISSING" && error.code !== "CHUNK_CORRUPT")) throw error;
          ctx.logger.warn(logLine("a chunked cache could not be assembled; removing it", { cachePath: resolved, code: error.code }));
          await ctx.removeCache(resolved);
          trusted = null;
          return null;
        }
      }
      await ctx.retention.noteUsed(resolved, trusted);
      return result;
    } finally {
      await ctx.releaseCache(lease, resolved, trusted === null);
    }
  }

  /** A trusted chunked cache's checked tail, or null (removed) when the tail is not what its manifest says. */
  async #chunkedSourceOf(cachePath: string, entry: TrustedCache): Promise<ChunkedSource | null> {
    const read = await this.context.fsBackend.readFileBounded(cachePath, MAX_TAIL_BYTES);
    try {
      if (!read || read.identity.size !== entry.size) throw new KvKeepError("CHUNK_CORRUPT", `the tail ${cachePath} is not the one its manifest names.`);
      return chunkedSource(cachePath, entry.chunks!, read.data);
    } catch (error) {
      if (!isKvKeepError(error, "CHUNK_CORRUPT")) throw error;
      this.context.logger.warn(logLine("a chunked cache's tail is damaged; removing it", { cachePath, error }));
      await this.context.removeCache(cachePath);
      return null;
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
    await this.context.remote?.close();
    await this.retention.close();
  }
}
