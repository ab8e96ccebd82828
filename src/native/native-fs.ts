/** NativeFs over the addon: flock-based locks that exclude other processes. */
import path from "node:path";
import { abortedError, fsWriteError } from "../errors.js";
import type { NativeBinding, NativeLock } from "./binding.js";
import {
  boundedReadError,
  checkMaxBytes,
  checkMode,
  checkPath,
  checkSeed,
  checkUnder,
  fileWriteError,
  fsReadError,
  invalidArgument,
  isMissing,
  lockError,
  renameError,
} from "./fs-errors.js";
import { createNativeMemoryFile } from "./memory-file.js";
import { type LockAttempt, LockWakeups, waitForLock } from "./wait.js";
import type { EntryIdentity, LockHandle, LockMode, LockOptions, MemoryFile, NativeBackendKind, NativeFs } from "./types.js";

class NativeLockHandle implements LockHandle {
  #lock: NativeLock | null;

  constructor(
    readonly path: string,
    readonly mode: LockMode,
    lock: NativeLock,
    private readonly wakeups: LockWakeups,
  ) {
    this.#lock = lock;
  }

  release(): void {
    const lock = this.#lock;
    if (!lock) return;
    this.#lock = null;
    lock.release();
    this.wakeups.notify(this.path);
  }

  unlinkAndRelease(): void {
    if (this.mode !== "exclusive") {
      // Another shared holder may be using the file; unlinking under it would let a
      // newcomer lock a fresh inode while they still hold the old one.
      throw invalidArgument("mode", `unlinkAndRelease needs an exclusive lock; ${this.path} is held shared.`);
    }
    const lock = this.#lock;
    if (!lock) return;
    this.#lock = null;
    try {
      lock.unlinkAndRelease(); // closes the fd even when the unlink fails
    } catch (error) {
      throw fsWriteError(`removing the lock file ${this.path}`, error);
    } finally {
      this.wakeups.notify(this.path);
    }
  }
}

export function createNativeFs(binding: NativeBinding, kind: Exclude<NativeBackendKind, "js-fallback">, binaryPath: string): NativeFs {
  const wakeups = new LockWakeups();

  // Opens (creating file and parent dirs) without locking. Sync: open(2) of a small
  // local file, like the rest of tryLockFile's contract.
  const open = (absPath: string, mode: LockMode, under: string | undefined): NativeLock => {
    try {
      return under === undefined ? new binding.Lock(absPath, mode === "exclusive") : new binding.Lock(absPath, mode === "exclusive", under);
    } catch (error) {
      throw lockError(absPath, mode, error);
    }
  };

  return Object.freeze({
    kind,
    crossProcessLocks: true,
    binaryPath,

    tryLockFile(lockPath: string, mode: LockMode, options?: LockOptions): LockHandle | null {
      const absPath = path.resolve(checkPath(lockPath));
      checkMode(mode);
      const lock = open(absPath, mode, checkUnder(options?.under, absPath));
      let acquired = false;
      try {
        acquired = lock.tryAcquire();
      } catch (error) {
        lock.release();
        throw lockError(absPath, mode, error);
      }
      if (!acquired) {
        lock.release();
        return null;
      }
      return new NativeLockHandle(absPath, mode, lock, wakeups);
    },

    async lockFile(lockPath: string, mode: LockMode, options?: LockOptions & { signal?: AbortSignal | undefined }): Promise<LockHandle> {
      const absPath = path.resolve(checkPath(lockPath));
      checkMode(mode);
      const under = checkUnder(options?.under, absPath);
      const signal = options?.signal;
      if (signal?.aborted) throw abortedError(`taking the ${mode} lock on ${absPath}`, signal);
      // Everything up to the first await runs synchronously in the call: the file is
      // open (on the inode the path names now) by the time lockFile returns, and the
      // same fd is polled for the whole wait (the identity check handles an unlink).
      const lock = open(absPath, mode, under);
      const attempt: LockAttempt = { tryAcquire: () => lock.tryAcquire(), abandon: () => lock.release() };
      let acquired = false;
      try {
        acquired = attempt.tryAcquire();
      } catch (error) {
        attempt.abandon();
        throw lockError(absPath, mode, error);
      }
      if (!acquired) {
        await waitForLock(attempt, absPath, wakeups, signal, `taking the ${mode} lock on ${absPath}`, (error) =>
          lockError(absPath, mode, error),
        );
      }
      return new NativeLockHandle(absPath, mode, lock, wakeups);
    },

    async identity(filePath: string): Promise<EntryIdentity | null> {
      const absPath = path.resolve(checkPath(filePath));
      try {
        return await binding.identity(absPath);
      } catch (error) {
        throw fsReadError(`checking ${absPath}`, error);
      }
    },

    async touchFiles(paths: readonly string[]): Promise<boolean[]> {
      const absPaths = paths.map((p) => path.resolve(checkPath(p)));
      let touched: Uint8Array;
      try {
        touched = await binding.touchFiles(absPaths);
      } catch (error) {
        throw fsWriteError(`touching ${absPaths.length} files`, error);
      }
      return Array.from(touched, (t) => t === 1);
    },

    async readFileBounded(filePath: string, maxBytes: number): Promise<{ data: Buffer; identity: EntryIdentity } | null> {
      const absPath = path.resolve(checkPath(filePath));
      checkMaxBytes(maxBytes);
      try {
        const read = await binding.readFileBounded(absPath, maxBytes);
        // Node-API buffers are Buffers in Node but plain Uint8Arrays in Bare: a Buffer view of
        // the same bytes (no copy) gives both runtimes Buffer's toString("utf8").
        const data: Uint8Array = read.data;
        return Buffer.isBuffer(data) ? read : { ...read, data: Buffer.from(data.buffer, data.byteOffset, data.byteLength) };
      } catch (error) {
        if (isMissing(error)) return null;
        throw boundedReadError(`reading ${absPath}`, maxBytes, error);
      }
    },

    async fsyncFile(filePath: string): Promise<void> {
      const absPath = path.resolve(checkPath(filePath));
      try {
        await binding.fsyncFile(absPath);
      } catch (error) {
        throw fileWriteError(`fsync of ${absPath}`, error);
      }
    },

    async fsyncDir(dirPath: string): Promise<void> {
      const absPath = path.resolve(checkPath(dirPath));
      try {
        await binding.fsyncDir(absPath);
      } catch (error) {
        throw fsWriteError(`fsync of directory ${absPath}`, error);
      }
    },

    async renameNoReplace(from: string, to: string): Promise<void> {
      const absFrom = path.resolve(checkPath(from, "from"));
      const absTo = path.resolve(checkPath(to, "to"));
      try {
        await binding.renameNoReplace(absFrom, absTo);
      } catch (error) {
        throw renameError(absFrom, absTo, error);
      }
    },

    async prefetch(filePath: string): Promise<void> {
      const absPath = path.resolve(checkPath(filePath));
      try {
        await binding.prefetch(absPath);
      } catch (error) {
        throw fsReadError(`prefetching ${absPath}`, error);
      }
    },

    async dropFromPageCache(filePath: string): Promise<void> {
      const absPath = path.resolve(checkPath(filePath));
      try {
        await binding.dropFromPageCache(absPath);
      } catch (error) {
        throw fsReadError(`dropping ${absPath} from the page cache`, error);
      }
    },

    async xxh64File(filePath: string, seed?: bigint): Promise<string> {
      const absPath = path.resolve(checkPath(filePath));
      const checkedSeed = checkSeed(seed);
      try {
        return await binding.xxh64File(absPath, checkedSeed);
      } catch (error) {
        throw fsReadError(`hashing ${absPath}`, error);
      }
    },

    createMemoryFile(name?: string): MemoryFile | null {
      return createNativeMemoryFile(binding, name);
    },
  } satisfies NativeFs);
}
