/**
 * The typed surface of kvkeep's file-system primitives (see index.ts for loading).
 * Both backends — the native addon and the pure-JS fallback — implement `NativeFs`.
 */

export type NativeBackendKind = "prebuilt" | "local-build" | "js-fallback";

export type LockMode = "exclusive" | "shared";

/** What a directory entry is, as lstat sees it (a symlink is itself, never its target). */
export type EntryType = "file" | "directory" | "symlink" | "fifo" | "socket" | "char-device" | "block-device" | "unknown";

/**
 * The identity of a directory entry: its type, and for comparing versions of a regular
 * file its size, inode and mtime in ns (decimal strings, 64-bit safe; what Node's bigint
 * stat gives).
 */
export interface EntryIdentity {
  type: EntryType;
  size: number;
  ino: string;
  mtimeNs: string;
}

export interface LockOptions {
  /**
   * A directory the lock file lies below (a cache root): every level between it and the
   * lock file is opened without following symlinks, and created when missing. A symlink
   * at any of those levels, or at the lock file itself, is refused with UNSAFE_PATH.
   */
  under?: string | undefined;
}

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

/**
 * An anonymous in-memory file (Linux memfd), for handing a state to the engine and back by
 * path without writing it to the disk: the engine opens `path` (`/proc/self/fd/<fd>`), which
 * names the same memory. Close it when done (a `finally`, or `withMemoryFile`): it holds a
 * state's worth of RAM; one dropped unclosed is closed when garbage-collected.
 */
/** What `MemoryFile.gather` assembles. */
export interface GatherPlan {
  /** The file's size afterwards. */
  readonly size: number;
  /** Regular files to read (each whole, once), with the exact size each must have. */
  readonly files: ReadonlyArray<{ readonly path: string; readonly size: number; readonly prefixBytes: number }>;
  /** Byte arrays besides the files; source `files.length + i` is `literals[i]`. */
  readonly literals: readonly Uint8Array[];
  /**
   * (source, srcOffset, dstOffset, length, count, srcStride, dstStride) 7-tuples covering
   * `size` exactly, one file's runs together: `count` copies of `length` bytes, the k-th from
   * srcOffset + k·srcStride to dstOffset + k·dstStride (count 1: one range).
   */
  readonly runs: Float64Array;
  /** Hash each file from this offset (XXH64, seed 0); omit for none. */
  readonly checksumFrom?: number | undefined;
}

export interface GatherResult {
  /** Each file's first `prefixBytes` bytes, in file order. */
  readonly prefixes: Buffer[];
  /** Each file's XXH64 from `checksumFrom` on; empty without `checksumFrom`. */
  readonly digests: bigint[];
}

export interface MemoryFile {
  /** The descriptor (`-1` once closed). */
  readonly fd: number;
  /** `/proc/self/fd/<fd>`: what to hand the engine as a file path. */
  readonly path: string;
  /** Its size in bytes now. IO_ERROR once closed. */
  size(): number;
  /**
   * Every byte, read off the event loop. Into `into` when it is large enough (resolves a view
   * of its first size() bytes: reuse one buffer across turns, since a fresh multi-MB buffer
   * can cost more in page faults than the copy), else into a new Buffer. IO_ERROR if the size
   * changes while reading (someone still writes it: an engine that has not finished saving).
   */
  read(into?: Uint8Array): Promise<Buffer>;
  /**
   * Replace the contents with `bytes`, or with the concatenation of `parts` (one gather
   * write: a state assembled from slices is never concatenated first). Don't modify the
   * arrays until it settles. NO_SPACE when memory (or RLIMIT_FSIZE) runs out.
   */
  write(bytes: Uint8Array | readonly Uint8Array[]): Promise<void>;
  /**
   * Replace the contents with `plan.size` bytes gathered from files and literals, off the
   * event loop (a state joined from its chunk files in one call: each file read once, no JS
   * copy). Resolves each file's first `prefixBytes` bytes (to check headers and tokens) and,
   * with `checksumFrom`, each file's XXH64 from that offset. A file that is missing rejects
   * with its system error (`code` ENOENT), one that is not a regular file or not its expected
   * size with ENOTREG / EWRONGSIZE (`path` names it); NO_SPACE when memory runs out.
   */
  gather(plan: GatherPlan): Promise<GatherResult>;
  /**
   * Read only the (offset, length) pairs of `ranges` into the same offsets of `into` (at
   * least `size` bytes), off the event loop: a commit reads a state's headers and its new
   * rows, not the rest. IO_ERROR unless the file is `size` bytes before and after (someone
   * still writes it); INVALID_ARGUMENT for ranges outside `size`.
   */
  readRanges(into: Uint8Array, ranges: Float64Array, size: number): Promise<void>;
  /** Free it. Idempotent; a read or write in flight finishes first. */
  close(): void;
}

export interface NativeFs {
  readonly kind: NativeBackendKind;
  /** True when locks exclude other processes (native flock); false in the JS fallback. */
  readonly crossProcessLocks: boolean;
  /** Where the binary came from (absolute path), or null for the fallback. */
  readonly binaryPath: string | null;
  /**
   * Non-blocking: creates the lock file (and missing parent dirs) if needed; returns null if
   * another holder conflicts. The lock file is never opened through a symlink, and must be
   * a regular file (UNSAFE_PATH otherwise).
   */
  tryLockFile(path: string, mode: LockMode, options?: LockOptions): LockHandle | null;
  /**
   * Waits until acquired, polling with a short backoff (never parks a threadpool thread).
   * Rejects with KvKeepError ABORTED at once when the signal aborts (also if already aborted).
   */
  lockFile(path: string, mode: LockMode, options?: LockOptions & { signal?: AbortSignal | undefined }): Promise<LockHandle>;
  /**
   * What is at `path` (lstat: a symlink is reported as one, never followed); null when
   * nothing is there (or a parent is not a directory). Never opens the entry, so a FIFO or
   * a device costs nothing. Other failures are IO_ERROR.
   */
  identity(path: string): Promise<EntryIdentity | null>;
  /**
   * Set the mtime of each path that is a regular file to now, never through a symlink at the
   * last component (the directories above are the caller's to check); one boolean per path:
   * touched, or nothing (no regular file) there. One call for a commit's hundreds of chunks.
   */
  touchFiles(paths: readonly string[]): Promise<boolean[]>;
  /**
   * Read a regular file whole, opened without following a symlink and without blocking
   * (O_NOFOLLOW | O_NONBLOCK), checked on the descriptor to be a regular file of at most
   * `maxBytes`. Resolves its bytes and the identity of what was read (fstat of the same
   * descriptor), or null when nothing is there. A symlink, FIFO, directory or device is
   * UNSAFE_PATH; a larger file is IO_ERROR (the message says so).
   */
  readFileBounded(path: string, maxBytes: number): Promise<{ data: Buffer; identity: EntryIdentity } | null>;
  /** fsync a regular file (never through a symlink). */
  fsyncFile(path: string): Promise<void>;
  fsyncDir(path: string): Promise<void>;
  /** Atomic rename that fails with KvKeepError TARGET_EXISTS if `to` exists. */
  renameNoReplace(from: string, to: string): Promise<void>;
  /** Hint the OS to read the whole file into the page cache. */
  prefetch(path: string): Promise<void>;
  /** Drop the file's clean pages from the page cache (a hint). */
  dropFromPageCache(path: string): Promise<void>;
  /**
   * XXH64 of the whole file, seed 0 (or given), off the event loop, as 16 lowercase hex
   * chars. Like every read, never through a symlink and only of a regular file (UNSAFE_PATH).
   */
  xxh64File(path: string, seed?: bigint): Promise<string>;
  /**
   * A new anonymous in-memory file (memfd_create with MFD_CLOEXEC), or null where there is
   * none: the JS fallback, platforms other than Linux, a kernel without memfd, no /proc.
   * Null means "use a real file"; other failures (out of descriptors or memory) throw IO_ERROR.
   * `name` (default "kvkeep-state") is only a label, shown in /proc/<pid>/fd.
   */
  createMemoryFile(name?: string): MemoryFile | null;
}
