/** What a session may use of its store: the internals, never exported from the package. */
import type { ChunkFiles } from "../chunkfiles/chunk-files.js";
import type { CacheLocation } from "../layout/paths.js";
import type { Logger } from "../logger.js";
import type { Lease, PathLockTable } from "../locks/path-locks.js";
import type { NativeFs } from "../native/index.js";
import type { RetentionHooks } from "../retention/hooks.js";
import type { TurnEvent } from "../types.js";
import type { DeleteMark } from "./deletes.js";
import type { StoreLayers } from "./layers.js";
import type { RemoteHooks } from "./remote-hooks.js";

export interface StoreContext {
  readonly root: string;
  readonly logger: Logger;
  readonly fsBackend: NativeFs;
  /** The root's chunk files and chunk gate (one per store): chunked commits write and touch chunks through it. */
  readonly chunkFiles: ChunkFiles;
  readonly locks: PathLockTable;
  readonly layers: StoreLayers;
  readonly onRollback: "clear" | "keep-committed";
  readonly verify: "size" | "checksum";
  /** Throws STORE_CLOSED once `close()` was called. */
  assertOpen(): void;
  /** mkdir -p the cache's directory, refusing symlinks below the root. */
  ensureCacheDir(loc: CacheLocation): Promise<void>;
  /** Forget every in-memory layer of one cache. */
  forgetCache(cachePath: string, init: string): void;
  /** Remove the cache's directory and its key directory if empty and unused. */
  prune(cachePath: string): Promise<void>;
  /** Remove a cache everywhere at once: its files, its index entry, its in-memory layers. Resolves to the files removed. */
  removeCache(cachePath: string): Promise<number>;
  /**
   * Give a cache up after using it: release the lease (removing the lock file when the
   * cache was `removed`), drop the directory ref, and prune emptied directories.
   */
  releaseCache(lease: Lease | null, cachePath: string, removed: boolean): Promise<void>;
  /** Where the delete records are now (a turn takes it right after its lock). */
  deleteMark(): Promise<DeleteMark>;
  /**
   * True when a delete recorded after `mark` — by this store, another store or another
   * process — covered `cachePath` (its key, its model, or everything).
   */
  deletedSince(cachePath: string, mark: DeleteMark): Promise<boolean>;
  emit(event: TurnEvent): void;
  readonly retention: RetentionHooks;
  /** The remote tier's hooks (`openKvCacheStore({ remote })`), or null without one. */
  readonly remote: RemoteHooks | null;
}
