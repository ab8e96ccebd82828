/** What a session may use of its store: the internals, never exported from the package. */
import type { CacheLocation } from "../layout/paths.js";
import type { Logger } from "../logger.js";
import type { PathLockTable } from "../locks/path-locks.js";
import type { NativeFs } from "../native/index.js";
import type { TurnState } from "../session/session.js";
import type { TurnEvent } from "../types.js";
import type { StoreLayers } from "./layers.js";

export interface StoreContext {
  readonly root: string;
  readonly logger: Logger;
  readonly nfs: NativeFs;
  readonly locks: PathLockTable;
  readonly layers: StoreLayers;
  readonly onRollback: "clear" | "keep-committed";
  readonly verify: "size" | "checksum";
  /** Turns begun and not yet committed or rolled back, for `delete` to invalidate. */
  readonly openTurns: Set<TurnState>;
  /** Throws STORE_CLOSED once `close()` was called. */
  assertOpen(): void;
  /** mkdir -p the cache's directory, refusing symlinks below the root. */
  ensureCacheDir(loc: CacheLocation): Promise<void>;
  /** Forget every in-memory layer of one cache. */
  forgetCache(cachePath: string, init: string): void;
  /** Remove the cache's directory and its key directory if empty and unused. */
  prune(cachePath: string): Promise<void>;
  emit(event: TurnEvent): void;
}
