/**
 * Every error kvkeep throws is a `KvKeepError` with a stable `code`.
 * Codes are part of the public API: match on `err.code`, never on the message.
 * Messages say what went wrong and what to do about it.
 */
export type KvKeepErrorCode =
  // Unsafe or malformed arguments, rejected before any file is touched.
  | "KEY_EMPTY"
  | "KEY_DOT_SEGMENT"
  | "KEY_HAS_SEPARATOR"
  | "KEY_HAS_NUL"
  | "KEY_LONE_SURROGATE"
  | "KEY_ABSOLUTE"
  | "KEY_TOO_LONG"
  | "KEY_RESERVED"
  | "INVALID_ARGUMENT"
  // Turn lifecycle.
  | "ABORTED"
  | "NO_CACHE_WRITTEN"
  | "CACHE_EMPTY"
  | "SAVE_MISSING"
  | "SAVE_EMPTY"
  | "DELETED_DURING_TURN"
  | "STORE_CLOSED"
  // File system.
  | "UNSAFE_PATH"
  | "NO_SPACE"
  | "IO_ERROR"
  | "TARGET_EXISTS"
  // Token chunks (docs/chunks-format.md): a chunk a chunked cache names is not on the disk, or
  // its bytes are not that chunk (torn, foreign, checksum or identity wrong). The cache is a miss.
  | "CHUNK_MISSING"
  | "CHUNK_CORRUPT"
  // A non-empty directory that is not a kvkeep cache root (no `.kvkeep/root.json`): refused untouched.
  | "ROOT_NOT_KVKEEP"
  // Remote tier (kvkeep/redis), for the calls that report it (CLI listing, explicit deletes).
  | "REMOTE_UNAVAILABLE"
  // Native addon.
  | "NATIVE_UNAVAILABLE"
  // A runtime kvkeep cannot run on (its Bare build on a Bare older than it supports).
  | "RUNTIME_UNSUPPORTED"
  // An engine kvkeep cannot drive (kvkeep/qvac: not @qvac/llm-llamacpp 0.53.0).
  | "ENGINE_UNSUPPORTED";

export class KvKeepError extends Error {
  override readonly name = "KvKeepError";
  readonly code: KvKeepErrorCode;
  /** Which argument was wrong, for argument errors (e.g. `"customKey"`). */
  readonly argument: string | undefined;

  constructor(code: KvKeepErrorCode, message: string, options?: { argument?: string; cause?: unknown }) {
    super(message, options?.cause === undefined ? undefined : { cause: options.cause });
    this.code = code;
    this.argument = options?.argument;
  }
}

export function isKvKeepError(error: unknown, code?: KvKeepErrorCode): error is KvKeepError {
  return error instanceof KvKeepError && (code === undefined || error.code === code);
}

/** The rejection for an aborted wait: carries the signal's reason as `cause`. */
export function abortedError(what: string, signal?: AbortSignal): KvKeepError {
  return new KvKeepError("ABORTED", `${what} was aborted before it started; nothing was changed.`, {
    cause: signal?.reason,
  });
}

/** Node's errno code of an fs error, if it has one. */
export function errnoCode(error: unknown): string | undefined {
  const code = (error as { code?: unknown } | null)?.code;
  return typeof code === "string" ? code : undefined;
}

/**
 * Wrap an fs error from a write path: out-of-space becomes `NO_SPACE`, the rest `IO_ERROR`.
 * `what` says which operation failed, for the message.
 */
export function fsWriteError(what: string, error: unknown): KvKeepError {
  const errno = errnoCode(error);
  if (errno === "ENOSPC" || errno === "EDQUOT") {
    return new KvKeepError(
      "NO_SPACE",
      `${what} failed: the disk is full (${errno}). Free space or lower the store's maxBytes; the last committed cache is intact.`,
      { cause: error },
    );
  }
  return new KvKeepError("IO_ERROR", `${what} failed: ${(error as Error)?.message ?? String(error)}`, {
    cause: error,
  });
}
