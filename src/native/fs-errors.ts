/** Mapping of system errors (from the addon or node:fs) onto kvkeep's error codes. */
import { errnoCode, fsWriteError, KvKeepError } from "../errors.js";
import type { LockMode } from "./types.js";

function messageOf(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}

/** A failed read-side operation (hashing, prefetch): always IO_ERROR. */
export function fsReadError(what: string, error: unknown): KvKeepError {
  if (error instanceof KvKeepError) return error;
  return new KvKeepError("IO_ERROR", `${what} failed: ${messageOf(error)}`, { cause: error });
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

export function checkMode(mode: unknown): LockMode {
  if (mode !== "exclusive" && mode !== "shared") {
    throw invalidArgument("mode", `mode must be "exclusive" or "shared", got ${String(mode)}.`);
  }
  return mode;
}
