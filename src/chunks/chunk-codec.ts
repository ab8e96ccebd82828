/**
 * The kvkc chunk: kvkeep's own encoding of a run of tokens of a sequence state — a 32-byte
 * header, then the tokens, every layer's K rows, every layer's V (rows, or for a transposed
 * V each of the E element rows' run). The cells are not stored: in a state kvkeep splits they
 * are exactly (position i, 1, seq id), regenerated on join from the placement. Pure.
 */
import { xxh64 } from "../keys/hash.js";
import { StateFormatError } from "./errors.js";
import { geometryDigest, type KvGeometry } from "./kv-geometry.js";
import { type SeqStateLayout, STATE_HEAD_BYTES } from "./seq-state-parser.js";
import { concat } from "./state-bytes.js";

/** "kvkc" (little-endian u32; bytes 6b 76 6b 63): a kvkeep token chunk. */
export const CHUNK_MAGIC = 0x636b766b;
export const CHUNK_FORMAT_VERSION = 1;
/** u32 magic, u16 version, u16 flags, u32 tokens, u32 first position, u64 geometry digest, u64 checksum. */
export const CHUNK_HEADER_BYTES = 32;
const CHUNK_FLAG_CHECKSUM = 1;
export const DEFAULT_CHUNK_TOKENS = 64;
/** Chunks larger than this many tokens are refused (a u32 in the header could say more; no real chunk does). */
export const MAX_CHUNK_TOKENS = 1 << 20;

// Spans: a run of tokens, wherever its bytes are (a state, or a chunk)

export interface Span {
  readonly count: number;
  readonly tokens: Uint8Array;
  /** Per layer: the run's K rows. */
  readonly k: readonly Uint8Array[];
  /** Per layer: the run's V rows (v_trans 0), or its elements of each of the E rows (v_trans 1, E views). */
  readonly v: readonly (readonly Uint8Array[])[];
}

export function stateSpan(state: Uint8Array, layout: SeqStateLayout, from: number, to: number): Span {
  const n = layout.tokenCount;
  const k: Uint8Array[] = [];
  const v: Uint8Array[][] = [];
  const geometry = layout.geometry;
  if (geometry !== null) {
    geometry.layers.forEach((layer, l) => {
      const kAt = layout.kOffsets[l]!;
      k.push(state.subarray(kAt + from * layer.kRowBytes, kAt + to * layer.kRowBytes));
      const vAt = layout.vOffsets[l]!;
      if (!geometry.vTrans) {
        v.push([state.subarray(vAt + from * layer.vRowBytes, vAt + to * layer.vRowBytes)]);
      } else {
        const el = layer.vElementBytes;
        const rows: Uint8Array[] = [];
        for (let j = 0; j < layer.vWidth; j++) rows.push(state.subarray(vAt + (j * n + from) * el, vAt + (j * n + to) * el));
        v.push(rows);
      }
    });
  }
  return { count: to - from, tokens: state.subarray(STATE_HEAD_BYTES + 4 * from, STATE_HEAD_BYTES + 4 * to), k, v };
}

/** The header of an encoded chunk. */
export interface ChunkHeader {
  readonly formatVersion: number;
  readonly tokenCount: number;
  /** Position of its first token in the sequence. */
  readonly firstPosition: number;
  readonly geometryDigest: bigint;
  /** XXH64 of the bytes after the header, or null when none was recorded. */
  readonly checksum: bigint | null;
}

/** Bytes of an encoded chunk of `tokenCount` tokens. */
export function chunkByteLength(geometry: KvGeometry | null, tokenCount: number): number {
  return CHUNK_HEADER_BYTES + tokenCount * (4 + (geometry?.kvBytesPerToken ?? 0));
}

/** Read (and check the shape of) a chunk's header. CHUNK_MISMATCH for anything that is not a kvkeep chunk. */
export function readChunkHeader(chunk: Uint8Array): ChunkHeader {
  if (chunk.byteLength < CHUNK_HEADER_BYTES) throw chunkMismatch(`${chunk.byteLength} bytes is shorter than a chunk header`);
  const view = new DataView(chunk.buffer, chunk.byteOffset, chunk.byteLength);
  if (view.getUint32(0, true) !== CHUNK_MAGIC) throw chunkMismatch("not a kvkeep chunk (magic)");
  const formatVersion = view.getUint16(4, true);
  if (formatVersion !== CHUNK_FORMAT_VERSION) throw chunkMismatch(`chunk format version ${formatVersion}, this kvkeep reads ${CHUNK_FORMAT_VERSION}`);
  const flags = view.getUint16(6, true);
  if ((flags & ~CHUNK_FLAG_CHECKSUM) !== 0) throw chunkMismatch(`unknown chunk flags 0x${flags.toString(16)}`);
  const tokenCount = view.getUint32(8, true);
  if (tokenCount > MAX_CHUNK_TOKENS) throw chunkMismatch(`${tokenCount} tokens in one chunk`);
  return {
    formatVersion,
    tokenCount,
    firstPosition: view.getUint32(12, true),
    geometryDigest: view.getBigUint64(16, true),
    checksum: (flags & CHUNK_FLAG_CHECKSUM) !== 0 ? view.getBigUint64(24, true) : null,
  };
}

export function chunkMismatch(detail: string): StateFormatError {
  return new StateFormatError("CHUNK_MISMATCH", `a chunk does not fit: ${detail}. Drop the chunk (and every cache whose chain names it) and save again.`);
}

/** The chunk's tokens (a copy), after checking its header. */
export function readChunkTokens(chunk: Uint8Array): Int32Array {
  const { tokenCount } = readChunkHeader(chunk);
  if (chunk.byteLength < CHUNK_HEADER_BYTES + 4 * tokenCount) throw chunkMismatch("shorter than its token list");
  const view = new DataView(chunk.buffer, chunk.byteOffset, chunk.byteLength);
  const tokens = new Int32Array(tokenCount);
  for (let i = 0; i < tokenCount; i++) tokens[i] = view.getInt32(CHUNK_HEADER_BYTES + 4 * i, true);
  return tokens;
}

/**
 * Whether the chunk's bytes are whole: its size matches its token count under `geometry`
 * and, when it carries one, its checksum matches. Throws CHUNK_MISMATCH otherwise.
 */
export function verifyChunk(chunk: Uint8Array, geometry: KvGeometry | null): ChunkHeader {
  const header = readChunkHeader(chunk);
  checkChunkFits(chunk, header, geometry, geometryDigest(geometry));
  checkChecksum(chunk, header);
  return header;
}

export function checkChecksum(chunk: Uint8Array, header: ChunkHeader): void {
  if (header.checksum !== null && xxh64(chunk.subarray(CHUNK_HEADER_BYTES)) !== header.checksum) {
    throw chunkMismatch(`its checksum does not match its bytes (chunk at position ${header.firstPosition})`);
  }
}

export function checkChunkFits(chunk: Uint8Array, header: ChunkHeader, geometry: KvGeometry | null, digest: bigint): void {
  if (header.geometryDigest !== digest) throw chunkMismatch("it was cut from a state of another KV geometry (model, KV types or flash-attention layout)");
  const expected = chunkByteLength(geometry, header.tokenCount);
  if (chunk.byteLength !== expected) {
    throw chunkMismatch(`${chunk.byteLength} bytes where ${header.tokenCount} tokens take ${expected} (a torn or foreign chunk)`);
  }
}

/** A range of bytes in a source the caller names by number (a file a gather reads, or a buffer). */
export interface SourceRange {
  readonly source: number;
  readonly offset: number;
  readonly byteLength: number;
}

/** `rows` ranges of `rowBytes` each, back to back in `source` from `offset` (a transposed V layer of a chunk). */
export interface RowsRange {
  readonly source: number;
  readonly offset: number;
  readonly rowBytes: number;
  readonly rows: number;
}

/** A span whose pieces are ranges of one source (an encoded chunk) instead of views. */
export interface SpanRanges {
  readonly count: number;
  readonly tokens: SourceRange;
  readonly k: readonly SourceRange[];
  readonly v: readonly (readonly SourceRange[])[];
}

/** SpanRanges with each transposed V layer as one RowsRange (not one range per element row). */
export interface SpanBlocks {
  readonly count: number;
  readonly tokens: SourceRange;
  readonly k: readonly SourceRange[];
  /** Per layer: its V rows, or (transposed V) its element rows as one block. */
  readonly v: readonly (SourceRange | RowsRange)[];
}

/** Where a chunk of `tokenCount` tokens keeps its tokens, K and V: the one statement of the kvkc payload layout. */
export function chunkSpanBlocks(source: number, tokenCount: number, geometry: KvGeometry | null): SpanBlocks {
  const t = tokenCount;
  let at = CHUNK_HEADER_BYTES;
  const range = (byteLength: number): SourceRange => {
    const r = { source, offset: at, byteLength };
    at += byteLength;
    return r;
  };
  const tokens = range(4 * t);
  const k: SourceRange[] = [];
  const v: (SourceRange | RowsRange)[] = [];
  if (geometry !== null) {
    for (const layer of geometry.layers) k.push(range(t * layer.kRowBytes));
    for (const layer of geometry.layers) {
      if (!geometry.vTrans) {
        v.push(range(t * layer.vRowBytes));
      } else {
        const rowBytes = t * layer.vElementBytes;
        v.push({ source, offset: at, rowBytes, rows: layer.vWidth });
        at += rowBytes * layer.vWidth;
      }
    }
  }
  return { count: t, tokens, k, v };
}

/** chunkSpanBlocks with every transposed V row as a range of its own. */
export function chunkSpanRanges(source: number, tokenCount: number, geometry: KvGeometry | null): SpanRanges {
  const blocks = chunkSpanBlocks(source, tokenCount, geometry);
  const v = blocks.v.map((layer) =>
    "rows" in layer
      ? Array.from({ length: layer.rows }, (_, j) => ({ source, offset: layer.offset + j * layer.rowBytes, byteLength: layer.rowBytes }))
      : [layer],
  );
  return { count: blocks.count, tokens: blocks.tokens, k: blocks.k, v };
}

export function chunkSpan(chunk: Uint8Array, header: ChunkHeader, geometry: KvGeometry | null): Span {
  const ranges = chunkSpanRanges(0, header.tokenCount, geometry);
  const view = (r: SourceRange): Uint8Array => chunk.subarray(r.offset, r.offset + r.byteLength);
  return { count: ranges.count, tokens: view(ranges.tokens), k: ranges.k.map(view), v: ranges.v.map((rows) => rows.map(view)) };
}

/** A chunk's bytes in payload order: tokens, every layer's K, every layer's V. */
export function spanPayload(span: Span): Uint8Array[] {
  const parts: Uint8Array[] = [span.tokens, ...span.k];
  for (const rows of span.v) parts.push(...rows);
  return parts;
}

export function encodeChunk(span: Span, firstPosition: number, digest: bigint, checksum: boolean): Buffer {
  const payload = spanPayload(span);
  let total = CHUNK_HEADER_BYTES;
  for (const part of payload) total += part.byteLength;
  const out = concat([Buffer.alloc(CHUNK_HEADER_BYTES), ...payload], total);
  out.writeUInt32LE(CHUNK_MAGIC, 0);
  out.writeUInt16LE(CHUNK_FORMAT_VERSION, 4);
  out.writeUInt16LE(checksum ? CHUNK_FLAG_CHECKSUM : 0, 6);
  out.writeUInt32LE(span.count, 8);
  out.writeUInt32LE(firstPosition, 12);
  out.writeBigUInt64LE(digest, 16);
  out.writeBigUInt64LE(checksum ? xxh64(out.subarray(CHUNK_HEADER_BYTES)) : 0n, 24);
  return out;
}

/** The first `count` tokens of a span (views of the same bytes). */
export function spanPrefix(span: Span, count: number, geometry: KvGeometry | null): Span {
  if (geometry === null) return { count, tokens: span.tokens.subarray(0, 4 * count), k: [], v: [] };
  return {
    count,
    tokens: span.tokens.subarray(0, 4 * count),
    k: span.k.map((rows, l) => rows.subarray(0, count * geometry.layers[l]!.kRowBytes)),
    v: span.v.map((rows, l) => {
      const layer = geometry.layers[l]!;
      return geometry.vTrans ? rows.map((run) => run.subarray(0, count * layer.vElementBytes)) : [rows[0]!.subarray(0, count * layer.vRowBytes)];
    }),
  };
}

/**
 * A chunk's first `tokenCount` tokens as a chunk of their own (what a borrow that stops inside
 * the chunk keeps: its new tail). The chunk is checked against `geometry` first.
 */
export function truncateChunk(chunk: Uint8Array, geometry: KvGeometry | null, tokenCount: number, options: { checksums?: boolean } = {}): Buffer {
  const header = readChunkHeader(chunk);
  const digest = geometryDigest(geometry);
  checkChunkFits(chunk, header, geometry, digest);
  if (!Number.isSafeInteger(tokenCount) || tokenCount < 0 || tokenCount > header.tokenCount) {
    throw new RangeError(`tokenCount must be an integer in [0, ${header.tokenCount}], got ${tokenCount}`);
  }
  const span = spanPrefix(chunkSpan(chunk, header, geometry), tokenCount, geometry);
  return encodeChunk(span, header.firstPosition, digest, options.checksums ?? true);
}
