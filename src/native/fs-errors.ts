/** Mapping of system errors (from the addon or node:fs) onto kvkeep's error codes. */
import path from "node:path";
import { errnoCode, fsWriteError, KvKeepError } from "../errors.js";
import type { LockMode } from "./types.js";

function messageOf(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}

/** What the backends report for a path that is a symlink or not a regular file. */
const NOT_A_REGULAR_FILE = new Set(["ELOOP", "ENOTREG", "EISDIR"]);

/** A symlink, FIFO, device or directory where kvkeep expects a file it may read. */
export function isNotRegularFile(error: unknown): boolean {
  return NOT_A_REGULAR_FILE.has(errnoCode(error) ?? "");
}

function unsafePathError(what: string, error: unknown): KvKeepError {
  return new KvKeepError(
    "UNSAFE_PATH",
    `${what} failed: the path is a symlink or not a regular file (a FIFO, device or directory); kvkeep never reads or writes through it. (${messageOf(error)})`,
    { cause: error },
  );
}

/** A failed read-side operation (hashing, prefetch): UNSAFE_PATH for a symlink or non-file, else IO_ERROR. */
export function fsReadError(what: string, error: unknown): KvKeepError {
  if (error instanceof KvKeepError) return error;
  if (isNotRegularFile(error)) return unsafePathError(what, error);
  return new KvKeepError("IO_ERROR", `${what} failed: ${messageOf(error)}`, { cause: error });
}

/** A failed write-side operation on a file (fsync): UNSAFE_PATH for a symlink or non-file, else as any write. */
export function fileWriteError(what: string, error: unknown): KvKeepError {
  if (error instanceof KvKeepError) return error;
  if (isNotRegularFile(error)) return unsafePathError(what, error);
  return fsWriteError(what, error);
}

/** A failed bounded read: as fsReadError, and a file over the bound says so. */
export function boundedReadError(what: string, maxBytes: number, error: unknown): KvKeepError {
  if (errnoCode(error) === "EFBIG") {
    return new KvKeepError("IO_ERROR", `${what} failed: the file is larger than ${maxBytes} bytes, more than kvkeep ever writes there.`, {
      cause: error,
    });
  }
  return fsReadError(what, error);
}

/** ENOENT/ENOTDIR: nothing is at the path (or a parent is not a directory). */
export function isMissing(error: unknown): boolean {
  const code = errnoCode(error);
  return code === "ENOENT" || code === "ENOTDIR";
}

/** renameNoReplace: an existing target is TARGET_EXISTS; the rest as any write path. */
export function renameError(from: string, to: string, error: unknown): KvKeepError {
  if (error instanceof KvKeepError) return error;
  if (errnoCode(error) === "EEXIST") {
    return new KvKeepError(
      "TARGET_EXISTS",
      `renaming ${from} to ${to} was refused: the target already exists (it was left untouched, and so was the source).`,
      { cause: error },
    );
  }
  return fsWriteError(`renaming ${from} to ${to}`, error);
}

export function lockError(path: string, mode: LockMode, error: unknown): KvKeepError {
  if (error instanceof KvKeepError) return error;
  // A symlink at the lock file or a level below `under`, a file where a directory belongs,
  // or a lock "file" that is a FIFO, directory or device.
  if (isNotRegularFile(error) || errnoCode(error) === "ENOTDIR") {
    return unsafePathError(`taking the ${mode} lock on ${path}`, error);
  }
  return fsWriteError(`taking the ${mode} lock on ${path}`, error);
}

export function invalidArgument(argument: string, message: string): KvKeepError {
  return new KvKeepError("INVALID_ARGUMENT", message, { argument });
}

const MAX_SEED = (1n << 64n) - 1n;

/** Seeds are unsigned 64-bit, as in the XXH64 spec. */
export function checkSeed(seed: unknown): bigint {
  if (seed === undefined) return 0n;
  if (typeof seed !== "bigint" || seed < 0n || seed > MAX_SEED) {
    throw invalidArgument("seed", `seed must be a bigint in [0, 2^64), got ${String(seed)}.`);
  }
  return seed;
}

export function checkPath(path: unknown, argument = "path"): string {
  if (typeof path !== "string" || path.length === 0 || path.includes("\0")) {
    throw invalidArgument(argument, `${argument} must be a non-empty string without NUL bytes.`);
  }
  return path;
}

/** `under` must be an absolute directory that `absPath` lies below. */
export function checkUnder(under: unknown, absPath: string): string | undefined {
  if (under === undefined) return undefined;
  const dir = path.resolve(checkPath(under, "under"));
  if (!absPath.startsWith(dir + path.sep)) {
    throw invalidArgument("under", `${absPath} is not below ${dir}.`);
  }
  return dir;
}

/** A bound for a read: a non-negative integer up to 1 GiB. */
export function checkMaxBytes(maxBytes: unknown): number {
  if (typeof maxBytes !== "number" || !Number.isSafeInteger(maxBytes) || maxBytes < 0 || maxBytes > 2 ** 30) {
    throw invalidArgument("maxBytes", `maxBytes must be an integer in [0, 2^30], got ${String(maxBytes)}.`);
  }
  return maxBytes;
}

export function checkMode(mode: unknown): LockMode {
  if (mode !== "exclusive" && mode !== "shared") {
    throw invalidArgument("mode", `mode must be "exclusive" or "shared", got ${String(mode)}.`);
  }
  return mode;
}
