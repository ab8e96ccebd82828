/** The raw addon as native/src/addon.cc exports it, and how a binary file is loaded and vetted. */
import { createRequire } from "node:module";
import type { EntryIdentity } from "./types.js";

/** Must equal kKvkeepNativeAbi in native/src/addon.cc. */
export const NATIVE_ABI = 6;

export interface NativeLock {
  /** Non-blocking flock + identity check; true once held (then idempotent). Throws a system error. */
  tryAcquire(): boolean;
  /** Closes the fd. Idempotent. */
  release(): void;
  /** Unlinks the file if held exclusively and still at the path, then closes. Idempotent. */
  unlinkAndRelease(): void;
}

/** An anonymous in-memory file (memfd), as native/src/memfd.cc exports it. */
export interface NativeMemoryFile {
  /** The descriptor; -1 once closed (or once a close was asked for while a read or write runs). */
  readonly fd: number;
  /** `/proc/self/fd/<fd>`, checked at creation to name this file. */
  readonly path: string;
  /** fstat size; throws EBADF once closed. */
  size(): number;
  /**
   * Every byte, read from offset 0 on the threadpool, into `into` when it holds them (resolves a
   * view of it) else into a new buffer; rejects if the size changes meanwhile.
   */
  read(into?: Uint8Array): Promise<Uint8Array>;
  /** The file becomes the concatenation of `parts` (ftruncate, then pwritev); don't change them until it settles. */
  write(parts: readonly Uint8Array[]): Promise<void>;
  /**
   * The file becomes `size` bytes assembled by `runs` ((source, srcOffset, dstOffset, length,
   * count, srcStride, dstStride) 7-tuples, each byte of the file written by exactly one copy;
   * a source below files.length is that file, read whole once, else a literal)
   * from regular files of exactly `fileSizes` bytes (opened without following a symlink) and
   * `literals`; the runs of one file together. Resolves each file's first `prefixBytes` bytes
   * (concatenated) and, unless `checksumFrom` is -1, the XXH64 of each file from that offset
   * (8 bytes each, little-endian). Rejects with the file's system error (ENOENT, ENOTREG,
   * EWRONGSIZE for a file of another size).
   */
  gather(
    size: number,
    files: readonly string[],
    fileSizes: readonly number[],
    prefixBytes: readonly number[],
    runs: Float64Array,
    literals: readonly Uint8Array[],
    checksumFrom: number,
  ): Promise<{ prefixes: Uint8Array; digests: Uint8Array }>;
  /** Pread the (offset, length) pairs of `ranges` into the same offsets of `into`; rejects unless the file is `size` bytes before and after. */
  readRanges(into: Uint8Array, ranges: Float64Array, size: number): Promise<void>;
  /** Idempotent; deferred to the end of a read or write in flight. */
  close(): void;
}

export interface NativeBinding {
  readonly abi: number;
  /**
   * Opens (creating the file and parent dirs) without locking; throws a system error. With
   * `under`, no level below it is followed through a symlink (ELOOP), and the lock file
   * must be a regular file (ENOTREG).
   */
  readonly Lock: new (path: string, exclusive: boolean, under?: string) => NativeLock;
  /** lstat as { type, size, ino, mtimeNs }; null when nothing is at the path. */
  identity(path: string): Promise<EntryIdentity | null>;
  /** O_NOFOLLOW | O_NONBLOCK open, fstat: regular (else ENOTREG) and ≤ maxBytes (else EFBIG), then read. */
  readFileBounded(path: string, maxBytes: number): Promise<{ data: Buffer; identity: EntryIdentity }>;
  /** Each path that is a regular file (lstat) gets mtime = now (never through a symlink): 1 per path touched, 0 otherwise. */
  touchFiles(paths: readonly string[]): Promise<Uint8Array>;
  fsyncFile(path: string): Promise<void>;
  fsyncDir(path: string): Promise<void>;
  /** Resolves with the method used; `forceLinkFallback` exercises the link()+unlink() path. */
  renameNoReplace(from: string, to: string, forceLinkFallback?: boolean): Promise<"renameat2" | "link">;
  prefetch(path: string): Promise<void>;
  dropFromPageCache(path: string): Promise<void>;
  /** `chunkBytes` (1 B – 64 MiB, default 1 MiB) is the read size; tests shrink it to split stripes. */
  xxh64File(path: string, seed?: bigint, chunkBytes?: number): Promise<string>;
  /** Synchronous XXH64 of a small buffer. */
  xxh64(bytes: Uint8Array, seed?: bigint): string;
  /** memfd_create(name, MFD_CLOEXEC); throws a system error (ENOSYS without memfd or /proc). */
  readonly MemoryFile: new (name: string) => NativeMemoryFile;
  /** Whether this build has memfd_create at all (Linux). */
  readonly memoryFileSupported: boolean;
}

const requireFromHere = createRequire(import.meta.url);

const FUNCTIONS = [
  "fsyncFile",
  "fsyncDir",
  "renameNoReplace",
  "prefetch",
  "dropFromPageCache",
  "xxh64File",
  "xxh64",
  "Lock",
  "identity",
  "readFileBounded",
  "touchFiles",
  "MemoryFile",
] as const;

/**
 * Loads a `.node` file and checks it is a kvkeep addon of this ABI. Throws (a plain Error
 * with the reason) when it is not — a stale build from an older checkout, a binary for
 * another platform or libc, or not ours at all.
 */
export function loadBindingFrom(binaryPath: string): NativeBinding {
  const loaded = requireFromHere(binaryPath) as Partial<NativeBinding> | null;
  if (loaded === null || typeof loaded !== "object") throw new Error("the binary exports nothing");
  if (loaded.abi !== NATIVE_ABI) {
    throw new Error(`the binary has native ABI ${String(loaded.abi)}, this kvkeep needs ${NATIVE_ABI} (rebuild it)`);
  }
  for (const name of FUNCTIONS) {
    if (typeof loaded[name] !== "function") throw new Error(`the binary lacks ${name} (rebuild it)`);
  }
  return loaded as NativeBinding;
}
