/**
 * The record that makes a remote state visible (pure): what it says, and the strict check
 * every record read from the server goes through. Remote data is hostile input: a record
 * that is not exactly well-formed, or that names another cache than the one asked for, is
 * refused — its fields are never used as paths, and its bytes are verified after download.
 * Only a prefix chain this version does not accept is dropped instead, as a manifest's is.
 */
import { assertCacheKey, assertConfigHash, assertModelId } from "../keys/safe-key.js";
import { SCOPE_ID_PATTERN } from "../keys/scope.js";
import { parseChain, parseChunkedState } from "../manifest/format.js";
import type { RemoteCacheId, RemoteStateRecord } from "./types.js";

export const RECORD_FORMAT = 1;
/**
 * A record of a chunked state (`tokenChunks`): its bytes are a tail, so a reader that does not
 * know chunks must refuse it rather than install the tail as a whole state — and a reader of
 * format 1 only does (`record format 2 is not 1`).
 */
export const CHUNKED_RECORD_FORMAT = 2;
/** Largest chunk a record may declare (Redis's own limit for one value is 512 MiB). */
export const MAX_CHUNK_BYTES = 256 * 1024 * 1024;
/** Largest state a record may declare: far beyond any KV cache, small enough for safe integers. */
export const MAX_STATE_BYTES = 2 ** 44;

export interface RemoteRecord extends RemoteStateRecord {
  format: typeof RECORD_FORMAT | typeof CHUNKED_RECORD_FORMAT;
  /** Bytes per chunk (the last may be shorter); fixed by the writer. */
  chunkBytes: number;
  chunks: number;
  /** Whose upload holds the bytes: this generation's, or an earlier one's with identical bytes. */
  dataGeneration: number;
}

export function chunkCount(size: number, chunkBytes: number): number {
  return Math.ceil(size / chunkBytes);
}

/** What a record says of its state, without how its bytes are laid out (what callers are given). */
export function stateOfRecord(record: RemoteRecord): RemoteStateRecord {
  const { format: _f, chunkBytes: _b, chunks: _c, dataGeneration: _d, ...state } = record;
  return state;
}

/** Bytes of chunk `index` of a state of `size` bytes. */
export function chunkLength(size: number, chunkBytes: number, index: number): number {
  return Math.min(chunkBytes, size - index * chunkBytes);
}

export function serializeRecord(record: RemoteRecord): string {
  const { id, ...rest } = record;
  // A shared-space record is written as before scopes: no scopeId field.
  const { scopeId, ...unscoped } = id;
  return JSON.stringify({ ...rest, ...unscoped, ...(scopeId != null ? { scopeId } : {}) });
}

const isCount = (v: unknown): v is number => typeof v === "number" && Number.isSafeInteger(v) && v >= 0;
const isHex16 = (v: unknown): v is string => typeof v === "string" && /^[0-9a-f]{16}$/.test(v);

function validId(raw: Record<string, unknown>): RemoteCacheId | null {
  try {
    assertModelId(raw.modelId);
    assertConfigHash(raw.configHash);
    assertCacheKey(raw.cacheKey);
  } catch {
    return null;
  }
  if (!(raw.fingerprint === null || typeof raw.fingerprint === "string")) return null;
  const scopeId = raw.scopeId ?? null;
  if (!(scopeId === null || (typeof scopeId === "string" && SCOPE_ID_PATTERN.test(scopeId)))) return null;
  return {
    // A shared-space id reads as before scopes: without the field.
    ...(scopeId !== null ? { scopeId: scopeId as string } : {}),
    modelId: raw.modelId as string,
    fingerprint: raw.fingerprint as string | null,
    configHash: raw.configHash as string,
    cacheKey: raw.cacheKey as string,
  };
}

export function sameCacheId(a: RemoteCacheId, b: RemoteCacheId): boolean {
  return (a.scopeId ?? null) === (b.scopeId ?? null) && a.modelId === b.modelId && a.fingerprint === b.fingerprint && a.configHash === b.configHash && a.cacheKey === b.cacheKey;
}

/**
 * Parse a record read from the server. With `expect`, the record must name exactly that
 * cache (scope, model, fingerprint, config, key): a record filed under the wrong key is refused.
 */
export function parseRecord(text: string, expect?: RemoteCacheId): RemoteRecord | { error: string } {
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch {
    return { error: "record is not JSON" };
  }
  if (!raw || typeof raw !== "object" || Array.isArray(raw)) return { error: "record is not an object" };
  const r = raw as Record<string, unknown>;
  if (r.format !== RECORD_FORMAT && r.format !== CHUNKED_RECORD_FORMAT) return { error: `record format ${String(r.format)} is not ${RECORD_FORMAT} or ${CHUNKED_RECORD_FORMAT}` };
  const tokenChunks = r.format === CHUNKED_RECORD_FORMAT ? parseChunkedState(r.tokenChunks) : null;
  if (r.format === CHUNKED_RECORD_FORMAT && (tokenChunks === null || tokenChunks === "invalid")) return { error: "record token chunks are invalid" };
  if (r.format === RECORD_FORMAT && r.tokenChunks !== undefined) return { error: "a format 1 record names token chunks" };
  const id = validId(r);
  if (!id) return { error: "record names no valid cache" };
  if (expect && !sameCacheId(id, expect)) return { error: "record names another cache than the one it is filed under" };
  const { size, chunkBytes, chunks, messageCount, tokenCount, committedAt, generation, dataGeneration, xxh64, chain } = r;
  if (!isCount(size) || size === 0 || size > MAX_STATE_BYTES) return { error: "record size is invalid" };
  if (!isCount(chunkBytes) || chunkBytes === 0 || chunkBytes > MAX_CHUNK_BYTES) return { error: "record chunk size is invalid" };
  if (chunks !== chunkCount(size, chunkBytes)) return { error: "record chunk count does not fit its size" };
  if (!isHex16(xxh64)) return { error: "record checksum is invalid" };
  if (!isCount(messageCount) || !(tokenCount === null || isCount(tokenCount)) || !isCount(committedAt)) {
    return { error: "record counts are invalid" };
  }
  if (!isCount(generation) || generation === 0 || !isCount(dataGeneration) || dataGeneration === 0 || dataGeneration > generation) {
    return { error: "record generation is invalid" };
  }
  // As in a manifest: a chain this version does not accept only stops the state from being a
  // prefix source; the state itself (checked by size and XXH64 on download) stays usable.
  const parsedChain = parseChain(chain, messageCount);
  return {
    format: r.format as RemoteRecord["format"],
    ...(tokenChunks !== null && tokenChunks !== "invalid" ? { tokenChunks } : {}),
    id,
    size,
    xxh64,
    messageCount,
    tokenCount: tokenCount as number | null,
    chain: parsedChain as string[] | null,
    committedAt,
    generation,
    chunkBytes,
    chunks,
    dataGeneration,
  };
}
