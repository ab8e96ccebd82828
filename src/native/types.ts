/**
 * The typed surface of kvkeep's file-system primitives (see index.ts for loading).
 * Both backends — the native addon and the pure-JS fallback — implement `NativeFs`.
 */

export type NativeBackendKind = "prebuilt" | "local-build" | "js-fallback";

export type LockMode = "exclusive" | "shared";

/**
 * A held lock. Keep a reference for as long as you need the lock: a native handle that
 * is garbage-collected unreleased has its fd closed (so a leak cannot wedge the cache).
 */
export interface LockHandle {
  /** The lock file, as an absolute path. */
  readonly path: string;
  readonly mode: LockMode;
  /** Close the lock fd (releases the OS lock). Idempotent. */
  release(): void;
  /** While holding an exclusive lock: unlink the lock file, then release. For pruning directories. Idempotent. */
  unlinkAndRelease(): void;
}

export interface NativeFs {
  readonly kind: NativeBackendKind;
  /** True when locks exclude other processes (native flock); false in the JS fallback. */
  readonly crossProcessLocks: boolean;
  /** Where the binary came from (absolute path), or null for the fallback. */
  readonly binaryPath: string | null;
  /** Non-blocking: creates the lock file (and missing parent dirs) if needed; returns null if another holder conflicts. */
  tryLockFile(path: string, mode: LockMode): LockHandle | null;
  /**
   * Waits until acquired, polling with a short backoff (never parks a threadpool thread).
   * Rejects with KvKeepError ABORTED at once when the signal aborts (also if already aborted).
   */
  lockFile(path: string, mode: LockMode, options?: { signal?: AbortSignal }): Promise<LockHandle>;
  fsyncFile(path: string): Promise<void>;
  fsyncDir(path: string): Promise<void>;
  /** Atomic rename that fails with KvKeepError TARGET_EXISTS if `to` exists. */
  renameNoReplace(from: string, to: string): Promise<void>;
  /** Hint the OS to read the whole file into the page cache. */
  prefetch(path: string): Promise<void>;
  /** Drop the file's clean pages from the page cache (a hint). */
  dropFromPageCache(path: string): Promise<void>;
  /** XXH64 of the whole file, seed 0 (or given), off the event loop, as 16 lowercase hex chars. */
  xxh64File(path: string, seed?: bigint): Promise<string>;
}
