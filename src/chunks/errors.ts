/**
 * Why kvkeep will not split, cut or join a state. Internal to the chunk layer: the store
 * catches these and keeps the whole-file layout (a state kvkeep does not fully understand is
 * never split), so they are not KvKeepErrors a user sees. Codes are stable; match on them.
 */
export type StateFormatErrorCode =
  /** Not a llama.cpp sequence state (wrong magic). */
  | "STATE_NOT_SEQUENCE"
  /** A sequence state of a format version kvkeep has not verified. */
  | "STATE_VERSION_UNKNOWN"
  /** The bytes end before the layout they describe does (a torn or cut file). */
  | "STATE_TRUNCATED"
  /** Bytes after the one KV section kvkeep understands: two sections (sliding window), a recurrent part, or garbage. */
  | "STATE_TRAILING_BYTES"
  /** Fields that contradict each other or are out of range (a corrupt file, or another layout). */
  | "STATE_MALFORMED"
  /** A layout kvkeep does not split: several streams holding cells, cells shared by sequences. */
  | "STATE_UNSUPPORTED"
  /** Parsed, but the cells are not positions 0..n-1 in order: no cut or split is exact. */
  | "STATE_NOT_CUTTABLE"
  /** A chunk that does not belong where it is joined: another geometry, position or size, or a bad checksum. */
  | "CHUNK_MISMATCH";

export class StateFormatError extends Error {
  override readonly name = "StateFormatError";

  constructor(
    readonly code: StateFormatErrorCode,
    message: string,
  ) {
    super(message);
  }
}

export function isStateFormatError(error: unknown, code?: StateFormatErrorCode): error is StateFormatError {
  return error instanceof StateFormatError && (code === undefined || error.code === code);
}
