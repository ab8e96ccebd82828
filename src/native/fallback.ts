/**
 * The pure-JS backend, used when no addon loads (or KVKEEP_NO_NATIVE=1).
 *
 * It keeps every single-process guarantee: locks conflict between handles in this
 * process exactly as flock handles do (exclusive excludes all, shared excludes
 * exclusive), renames never replace (link()+unlink(), atomic even across processes),
 * fsync is real. What it cannot do is exclude *other processes*: Node has no advisory
 * locks, so `crossProcessLocks` is false and the loader says so once through the logger.
 */
import { constants as fsConstants, closeSync, fstatSync, lstatSync, mkdirSync, openSync, unlinkSync } from "node:fs";
import { type FileHandle, lstat, link, lutimes, open, stat, rename, unlink } from "node:fs/promises";
import path from "node:path";
import { createXxh64, hashReady } from "../keys/hash.js";
import { abortedError, errnoCode, fsWriteError } from "../errors.js";
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
import { type LockAttempt, LockWakeups, waitForLock } from "./wait.js";
import { notRegularFileError, openRegularFile, SAFE_OPEN_FLAGS } from "./safe-open.js";
import type { EntryIdentity, EntryType, LockHandle, LockMode, LockOptions, MemoryFile, NativeFs } from "./types.js";

/** Module-level: every fallback instance in this process shares one view of who holds what. */
const held = new Map<string, { exclusive: boolean; holders: number }>();
const wakeups = new LockWakeups();

const SAFE_READ = fsConstants.O_RDONLY | SAFE_OPEN_FLAGS;
const notRegular = notRegularFileError;
const openRegular = (absPath: string): Promise<FileHandle> => openRegularFile(absPath);

function entryType(st: { isFile(): boolean; isDirectory(): boolean; isSymbolicLink(): boolean; isFIFO(): boolean; isSocket(): boolean; isCharacterDevice(): boolean; isBlockDevice(): boolean }): EntryType {
  if (st.isFile()) return "file";
  if (st.isDirectory()) return "directory";
  if (st.isSymbolicLink()) return "symlink";
  if (st.isFIFO()) return "fifo";
  if (st.isSocket()) return "socket";
  if (st.isCharacterDevice()) return "char-device";
  if (st.isBlockDevice()) return "block-device";
  return "unknown";
}

function identityOf(st: import("node:fs").BigIntStats): EntryIdentity {
  return { type: entryType(st), size: Number(st.size), ino: st.ino.toString(), mtimeNs: st.mtimeNs.toString() };
}

/**
 * Create (if missing) and open the lock file the way the addon does: each level below
 * `under` a real directory (made when missing, never a symlink), the file itself opened
 * without following a symlink, created with O_EXCL, and a regular file. (Checked with
 * lstat level by level: unlike the addon's openat walk, not proof against a concurrent
 * swap — this backend makes no cross-process promise.)
 */
function openLockFile(absPath: string, under: string | undefined): void {
  if (under === undefined) {
    try {
      mkdirSync(path.dirname(absPath), { recursive: true });
    } catch (error) {
      // A file where a directory belongs: the same answer as the addon's open (ENOTDIR).
      if (errnoCode(error) !== "EEXIST") throw error;
      throw Object.assign(new Error(`ENOTDIR: not a directory, open '${absPath}'`), { code: "ENOTDIR" });
    }
  } else {
    let dir = under;
    for (const part of path.relative(under, path.dirname(absPath)).split(path.sep).filter(Boolean)) {
      dir = path.join(dir, part);
      try {
        mkdirSync(dir);
      } catch (error) {
        if (errnoCode(error) !== "EEXIST") throw error;
      }
      if (!lstatSync(dir).isDirectory()) {
        throw Object.assign(new Error(`ELOOP: not a plain directory, open '${dir}'`), { code: "ELOOP" });
      }
    }
  }
  const base = fsConstants.O_RDWR | SAFE_OPEN_FLAGS;
  let fd: number;
  try {
    fd = openSync(absPath, base);
  } catch (error) {
    if (errnoCode(error) !== "ENOENT") throw error;
    fd = openSync(absPath, base | fsConstants.O_CREAT | fsConstants.O_EXCL, 0o666);
  }
  try {
    if (!fstatSync(fd).isFile()) throw notRegular(absPath);
  } finally {
    closeSync(fd);
  }
}

function tryRegister(absPath: string, mode: LockMode, under?: string): boolean {
  const current = held.get(absPath);
  if (current && (current.exclusive || mode === "exclusive")) return false;
  // Same on-disk effect as the native lock: the lock file (and its directory) exist
  // while held, so code that prunes directories sees the same files with either backend.
  try {
    openLockFile(absPath, under);
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

/** fsync a regular file (opened like every file kvkeep reads) or (on POSIX) a directory. */
async function openAndSync(absPath: string, directory: boolean): Promise<void> {
  const handle = directory ? await open(absPath, "r") : await openRegular(absPath);
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

    tryLockFile(lockPath: string, mode: LockMode, options?: LockOptions): LockHandle | null {
      const absPath = path.resolve(checkPath(lockPath));
      checkMode(mode);
      const under = checkUnder(options?.under, absPath);
      return tryRegister(absPath, mode, under) ? new FallbackLockHandle(absPath, mode) : null;
    },

    async lockFile(lockPath: string, mode: LockMode, options?: LockOptions & { signal?: AbortSignal | undefined }): Promise<LockHandle> {
      const absPath = path.resolve(checkPath(lockPath));
      checkMode(mode);
      const under = checkUnder(options?.under, absPath);
      const signal = options?.signal;
      if (signal?.aborted) throw abortedError(`taking the ${mode} lock on ${absPath}`, signal);
      if (!tryRegister(absPath, mode, under)) {
        const attempt: LockAttempt = { tryAcquire: () => tryRegister(absPath, mode, under), abandon: () => {} };
        await waitForLock(attempt, absPath, wakeups, signal, `taking the ${mode} lock on ${absPath}`, (error) =>
          lockError(absPath, mode, error),
        );
      }
      return new FallbackLockHandle(absPath, mode);
    },

    async identity(filePath: string): Promise<EntryIdentity | null> {
      const absPath = path.resolve(checkPath(filePath));
      try {
        return identityOf(await lstat(absPath, { bigint: true }));
      } catch (error) {
        if (isMissing(error)) return null;
        throw fsReadError(`checking ${absPath}`, error);
      }
    },

    async touchFiles(paths: readonly string[]): Promise<boolean[]> {
      return Promise.all(
        paths.map(async (p) => {
          const absPath = path.resolve(checkPath(p));
          try {
            if (!(await lstat(absPath)).isFile()) return false;
            const now = new Date();
            await lutimes(absPath, now, now);
            return true;
          } catch (error) {
            if (isMissing(error)) return false;
            throw fsWriteError(`touching ${absPath}`, error);
          }
        }),
      );
    },

    async readFileBounded(filePath: string, maxBytes: number): Promise<{ data: Buffer; identity: EntryIdentity } | null> {
      const absPath = path.resolve(checkPath(filePath));
      checkMaxBytes(maxBytes);
      let handle: FileHandle;
      try {
        handle = await open(absPath, SAFE_READ);
      } catch (error) {
        if (isMissing(error)) return null;
        throw boundedReadError(`reading ${absPath}`, maxBytes, error);
      }
      try {
        const st = await handle.stat({ bigint: true });
        if (!st.isFile()) throw notRegular(absPath);
        if (st.size > BigInt(maxBytes)) throw Object.assign(new Error(`EFBIG: file too large, read '${absPath}'`), { code: "EFBIG" });
        // One byte past the bound: a file that grew since the fstat is refused, never read without limit.
        const buffer = Buffer.allocUnsafe(Math.min(maxBytes + 1, Number(st.size) + 4096));
        let got = 0;
        for (;;) {
          if (got === buffer.length) break;
          const { bytesRead } = await handle.read(buffer, got, buffer.length - got, got);
          if (bytesRead === 0) break;
          got += bytesRead;
        }
        if (got > maxBytes) throw Object.assign(new Error(`EFBIG: file too large, read '${absPath}'`), { code: "EFBIG" });
        return { data: buffer.subarray(0, got), identity: identityOf(st) };
      } catch (error) {
        throw boundedReadError(`reading ${absPath}`, maxBytes, error);
      } finally {
        await handle.close();
      }
    },

    async fsyncFile(filePath: string): Promise<void> {
      const absPath = path.resolve(checkPath(filePath));
      try {
        await openAndSync(absPath, false);
      } catch (error) {
        throw fileWriteError(`fsync of ${absPath}`, error);
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
        await openAndSync(absPath, true);
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
        const handle = await openRegular(absPath);
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
      // Nothing to drop without posix_fadvise; still report what the native backend reports.
      try {
        if (!(await lstat(absPath)).isFile()) throw notRegular(absPath);
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
        const handle = await openRegular(absPath);
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

    createMemoryFile(): MemoryFile | null {
      // Node has no memfd: callers keep the whole-file layout (a real file on disk).
      return null;
    },
  } satisfies NativeFs);
}
