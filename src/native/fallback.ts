/**
 * The pure-JS backend, used when no addon loads (or KVKEEP_NO_NATIVE=1).
 *
 * It keeps every single-process guarantee: locks conflict between handles in this
 * process exactly as flock handles do (exclusive excludes all, shared excludes
 * exclusive), renames never replace (link()+unlink(), atomic even across processes),
 * fsync is real. What it cannot do is exclude *other processes*: Node has no advisory
 * locks, so `crossProcessLocks` is false and the loader says so once through the logger.
 */
import { constants as fsConstants, closeSync, mkdirSync, openSync, unlinkSync } from "node:fs";
import { lstat, link, open, stat, rename, unlink } from "node:fs/promises";
import path from "node:path";
import { createXxh64, hashReady } from "../keys/hash.js";
import { abortedError, errnoCode, fsWriteError } from "../errors.js";
import { checkMode, checkPath, checkSeed, fsReadError, invalidArgument, lockError, renameError } from "./fs-errors.js";
import { type LockAttempt, LockWakeups, waitForLock } from "./wait.js";
import type { LockHandle, LockMode, NativeFs } from "./types.js";

/** Module-level: every fallback instance in this process shares one view of who holds what. */
const held = new Map<string, { exclusive: boolean; holders: number }>();
const wakeups = new LockWakeups();

function tryRegister(absPath: string, mode: LockMode): boolean {
  const current = held.get(absPath);
  if (current && (current.exclusive || mode === "exclusive")) return false;
  // Same on-disk effect as the native lock: the lock file (and its directory) exist
  // while held, so code that prunes directories sees the same files with either backend.
  try {
    mkdirSync(path.dirname(absPath), { recursive: true });
    closeSync(openSync(absPath, fsConstants.O_RDWR | fsConstants.O_CREAT, 0o666));
  } catch (error) {
    throw lockError(absPath, mode, error);
  }
  if (current) current.holders += 1;
  else held.set(absPath, { exclusive: mode === "exclusive", holders: 1 });
  return true;
}

function unregister(absPath: string): void {
  const current = held.get(absPath);
  if (!current) return;
  current.holders -= 1;
  if (current.holders <= 0) held.delete(absPath);
}

class FallbackLockHandle implements LockHandle {
  #released = false;

  constructor(
    readonly path: string,
    readonly mode: LockMode,
  ) {}

  release(): void {
    if (this.#released) return;
    this.#released = true;
    unregister(this.path);
    wakeups.notify(this.path);
  }

  unlinkAndRelease(): void {
    if (this.mode !== "exclusive") {
      throw invalidArgument("mode", `unlinkAndRelease needs an exclusive lock; ${this.path} is held shared.`);
    }
    if (this.#released) return;
    this.#released = true;
    try {
      unlinkSync(this.path);
    } catch (error) {
      if (errnoCode(error) !== "ENOENT") throw fsWriteError(`removing the lock file ${this.path}`, error);
    } finally {
      unregister(this.path);
      wakeups.notify(this.path);
    }
  }
}

/** fsync a file or (on POSIX) a directory through a read-only descriptor. */
async function openAndSync(absPath: string): Promise<void> {
  const handle = await open(absPath, "r");
  try {
    await handle.sync();
  } finally {
    await handle.close();
  }
}

const READ_CHUNK = 1 << 20;

/** link() where hard links are not supported at all; anything else is a real error. */
const NO_HARD_LINKS = new Set(["EPERM", "ENOTSUP", "EOPNOTSUPP", "ENOSYS"]);

export function createJsFallbackFs(): NativeFs {
  return Object.freeze({
    kind: "js-fallback",
    crossProcessLocks: false,
    binaryPath: null,

    tryLockFile(lockPath: string, mode: LockMode): LockHandle | null {
      const absPath = path.resolve(checkPath(lockPath));
      checkMode(mode);
      return tryRegister(absPath, mode) ? new FallbackLockHandle(absPath, mode) : null;
    },

    async lockFile(lockPath: string, mode: LockMode, options?: { signal?: AbortSignal }): Promise<LockHandle> {
      const absPath = path.resolve(checkPath(lockPath));
      checkMode(mode);
      const signal = options?.signal;
      if (signal?.aborted) throw abortedError(`taking the ${mode} lock on ${absPath}`, signal);
      if (!tryRegister(absPath, mode)) {
        const attempt: LockAttempt = { tryAcquire: () => tryRegister(absPath, mode), abandon: () => {} };
        await waitForLock(attempt, absPath, wakeups, signal, `taking the ${mode} lock on ${absPath}`, (error) =>
          lockError(absPath, mode, error),
        );
      }
      return new FallbackLockHandle(absPath, mode);
    },

    async fsyncFile(filePath: string): Promise<void> {
      const absPath = path.resolve(checkPath(filePath));
      try {
        await openAndSync(absPath);
      } catch (error) {
        throw fsWriteError(`fsync of ${absPath}`, error);
      }
    },

    async fsyncDir(dirPath: string): Promise<void> {
      const absPath = path.resolve(checkPath(dirPath));
      try {
        const info = await stat(absPath);
        if (!info.isDirectory()) {
          throw Object.assign(new Error(`ENOTDIR: not a directory, open '${absPath}'`), { code: "ENOTDIR" });
        }
        // Windows cannot open a directory for fsync; NTFS metadata is journaled anyway.
        if (process.platform === "win32") return;
        await openAndSync(absPath);
      } catch (error) {
        throw fsWriteError(`fsync of directory ${absPath}`, error);
      }
    },

    async renameNoReplace(from: string, to: string): Promise<void> {
      const absFrom = path.resolve(checkPath(from, "from"));
      const absTo = path.resolve(checkPath(to, "to"));
      try {
        // link() fails with EEXIST if the target exists, atomically: the same
        // no-replace guarantee the native renameat2 gives.
        await link(absFrom, absTo);
      } catch (error) {
        if (!NO_HARD_LINKS.has(errnoCode(error) ?? "")) throw renameError(absFrom, absTo, error);
        // No hard links on this filesystem: check, then rename. Racy against other
        // processes, but this backend does not promise cross-process safety anyway,
        // and within the process the caller holds the target's lock.
        let targetExists = true;
        try {
          await lstat(absTo);
        } catch (statError) {
          if (errnoCode(statError) !== "ENOENT") throw renameError(absFrom, absTo, statError);
          targetExists = false;
        }
        if (targetExists) {
          throw renameError(absFrom, absTo, Object.assign(new Error(`EEXIST: file already exists, '${absTo}'`), { code: "EEXIST" }));
        }
        try {
          await rename(absFrom, absTo);
        } catch (renameFailure) {
          throw renameError(absFrom, absTo, renameFailure);
        }
        return;
      }
      try {
        await unlink(absFrom);
      } catch (error) {
        if (errnoCode(error) !== "ENOENT") throw fsWriteError(`removing ${absFrom} after linking it to ${absTo}`, error);
      }
    },

    async prefetch(filePath: string): Promise<void> {
      const absPath = path.resolve(checkPath(filePath));
      // No readahead hint in Node: reading the file through once loads it all.
      try {
        const handle = await open(absPath, "r");
        try {
          const buffer = Buffer.allocUnsafe(READ_CHUNK);
          while ((await handle.read(buffer, 0, buffer.length, null)).bytesRead > 0);
        } finally {
          await handle.close();
        }
      } catch (error) {
        throw fsReadError(`prefetching ${absPath}`, error);
      }
    },

    async dropFromPageCache(filePath: string): Promise<void> {
      const absPath = path.resolve(checkPath(filePath));
      // Nothing to drop without posix_fadvise; still report a missing file like the native backend.
      try {
        await stat(absPath);
      } catch (error) {
        throw fsReadError(`dropping ${absPath} from the page cache`, error);
      }
    },

    async xxh64File(filePath: string, seed?: bigint): Promise<string> {
      const absPath = path.resolve(checkPath(filePath));
      const checkedSeed = checkSeed(seed);
      try {
        await hashReady; // stream through WebAssembly, not the buffering JS fallback
        const hasher = createXxh64(checkedSeed);
        const handle = await open(absPath, "r");
        try {
          const buffer = Buffer.allocUnsafe(READ_CHUNK);
          for (;;) {
            const { bytesRead } = await handle.read(buffer, 0, buffer.length, null);
            if (bytesRead === 0) break;
            hasher.update(bytesRead === buffer.length ? buffer : buffer.subarray(0, bytesRead));
          }
        } finally {
          await handle.close();
        }
        return hasher.digestHex();
      } catch (error) {
        throw fsReadError(`hashing ${absPath}`, error);
      }
    },
  } satisfies NativeFs);
}
