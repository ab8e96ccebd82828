/**
 * The kvkeep store as a user opens it (`openKvCacheStore`): the store core (src/store/store.ts)
 * and the sessions it hands out (src/session/). The only module that imports both, so the
 * store never knows the session that runs on it.
 */
import type { CacheLocation } from "../layout/paths.js";
import type { NativeBackendKind } from "../native/index.js";
import { createSession } from "../session/session.js";
import type { InternalStoreOptions, KvCacheStoreOptions } from "../store/options.js";
import type { RecoveryReport } from "../store/recovery.js";
import { StoreCore } from "../store/store.js";
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

export type { DeleteReport } from "../store/delete.js";
export type { InternalStoreOptions, KvCacheStoreOptions };

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

/** The store core with its sessions. @internal (tests and the CLI construct it directly) */
export class KvCacheStoreImpl extends StoreCore implements KvCacheStore {
  constructor(options: KvCacheStoreOptions & InternalStoreOptions = {}) {
    super(options);
  }

  createSession(modelId: string, options?: SessionOptions): KvCacheSession {
    this.context.assertOpen();
    return createSession(this.context, modelId, options);
  }
}

export function openKvCacheStore(options?: KvCacheStoreOptions): KvCacheStore {
  return new KvCacheStoreImpl(options);
}
