/**
 * llama.cpp's sequence state, as node-llama-cpp 3.22.1 writes it (`saveStateToFile`), taken
 * apart into token chunks and put back together byte-identically. Pure: bytes in, bytes out.
 * docs/chunks-format.md has the layout and what was verified on the real engine.
 *
 * The state (all integers little-endian; "ggsq" version 3):
 *
 *   u32 magic 0x67677371, u32 version 3, u32 n, i32 × n tokens,
 *   u32 n_stream, then per stream: u32 cell count c, and when c > 0:
 *     c × (i32 pos, u32 n_seq_id = 1, i32 seq_id)             cells, in KV-cell order
 *     u32 v_trans, u32 n_layer
 *     per layer: i32 K type, u64 K row bytes, c K rows        (every layer's K first)
 *     per layer, v_trans 0: i32 V type, u64 V row bytes, c V rows
 *     per layer, v_trans 1: i32 V type, u32 element bytes, u32 width E,
 *                            E element rows of c elements      (V transposed)
 *
 * kvkeep splits only what it fully understands: one stream holding the cells (the others
 * empty), cells at positions 0..n-1 in order, one sequence per cell, n equal to the cell
 * count, nothing after the one KV section (a sliding-window model writes two, a recurrent or
 * hybrid one another layout). Anything else is refused with a StateFormatError, and the store
 * keeps it whole.
 *
 * A chunk is kvkeep's own encoding of a run of tokens (see CHUNK_* below): a 32-byte header,
 * then the tokens, every layer's K rows, every layer's V (rows, or for a transposed V each of
 * the E element rows' run). The cells are not stored: in a state kvkeep splits they are
 * exactly (position i, 1, seq id), regenerated on join from the placement.
 */
import { xxh64 } from "../keys/hash.js";
import { StateFormatError } from "./errors.js";

/** "ggsq": LLAMA_STATE_SEQ_MAGIC. On disk the bytes are 71 73 67 67. */
export const SEQ_STATE_MAGIC = 0x67677371;
/** The one sequence-state version kvkeep has verified (LLAMA_STATE_SEQ_VERSION in node-llama-cpp 3.22.1's llama.cpp). */
export const SEQ_STATE_VERSION = 3;
/** LLAMA_MAX_SEQ: llama.cpp never has more streams than sequences, nor more than this. */
export const MAX_STREAMS = 256;
/** Far above any model's layer count; a larger number is a corrupt file. */
const MAX_LAYERS = 4096;

/** "kvkc" (little-endian u32; bytes 6b 76 6b 63): a kvkeep token chunk. */
export const CHUNK_MAGIC = 0x636b766b;
export const CHUNK_FORMAT_VERSION = 1;
/** u32 magic, u16 version, u16 flags, u32 tokens, u32 first position, u64 geometry digest, u64 checksum. */
export const CHUNK_HEADER_BYTES = 32;
const CHUNK_FLAG_CHECKSUM = 1;
export const DEFAULT_CHUNK_TOKENS = 256;
/** Chunks larger than this many tokens are refused (a u32 in the header could say more; no real chunk does). */
export const MAX_CHUNK_TOKENS = 1 << 20;

const STATE_HEAD_BYTES = 12; // magic, version, token count
const CELL_BYTES = 12; // pos, n_seq_id, seq_id

/** One layer's K and V as the state describes them. */
export interface LayerKv {
  /** ggml type id of K (1 = F16, 8 = Q8_0, ...). */
  readonly kType: number;
  /** Bytes of one cell's K row. */
  readonly kRowBytes: number;
  readonly vType: number;
  /** Bytes of one cell's V (its row, or E elements when transposed). */
  readonly vRowBytes: number;
  /** Transposed V only: bytes of one element, and the number E of element rows. 0 otherwise. */
  readonly vElementBytes: number;
  readonly vWidth: number;
}

/** What every state of one model and context configuration shares: the KV section's header fields. */
export interface KvGeometry {
  /** V stored transposed (flash attention off). */
  readonly vTrans: boolean;
  readonly layers: readonly LayerKv[];
  /** K and V bytes of one token, every layer. */
  readonly kvBytesPerToken: number;
}

/** Where a sequence's cells sit in the state: the context's stream count, which stream, and the sequence id in each cell. */
export interface StreamPlacement {
  /** The context's `sequences` (llama.cpp's n_stream; 1 with a unified KV cache). */
  readonly nStream: number;
  readonly streamIndex: number;
  readonly seqId: number;
}

export interface SeqStateLayout {
  readonly version: number;
  readonly byteLength: number;
  readonly tokenCount: number;
  /** The token list (a copy). */
  readonly tokens: Int32Array;
  /** Where the cells sit. For an empty state (no cells) stream 0 and seq id 0: nothing says otherwise. */
  readonly placement: StreamPlacement;
  /** Null for an empty state (no cells, so no KV section). */
  readonly geometry: KvGeometry | null;
  /** Offset of the n_stream field. */
  readonly streamsOffset: number;
  /** Offset of the first cell (right after the holding stream's cell count); the KV section runs to `sectionEnd`. */
  readonly cellsOffset: number;
  readonly sectionEnd: number;
  /** Where each layer's K rows and V data begin (after that layer's header). */
  readonly kOffsets: readonly number[];
  readonly vOffsets: readonly number[];
  /** Cell i is at position i for every i: the state can be cut and split exactly. */
  readonly positionsAreIndexes: boolean;
}

// ---------------------------------------------------------------------------
// Parsing

class Reader {
  readonly view: DataView;
  pos = 0;

  constructor(readonly bytes: Uint8Array) {
    this.view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  }

  get remaining(): number {
    return this.bytes.byteLength - this.pos;
  }

  need(bytes: number, what: string): void {
    if (bytes > this.remaining) {
      throw new StateFormatError(
        "STATE_TRUNCATED",
        `the state ends ${this.bytes.byteLength} bytes in, before ${what} (${bytes} bytes at offset ${this.pos}): a torn or cut file; never load it.`,
      );
    }
  }

  u32(what: string): number {
    this.need(4, what);
    const value = this.view.getUint32(this.pos, true);
    this.pos += 4;
    return value;
  }

  i32(what: string): number {
    this.need(4, what);
    const value = this.view.getInt32(this.pos, true);
    this.pos += 4;
    return value;
  }

  u64(what: string): number {
    this.need(8, what);
    const value = this.view.getBigUint64(this.pos, true);
    this.pos += 8;
    if (value > BigInt(Number.MAX_SAFE_INTEGER)) throw malformed(`${what} is ${value}, beyond any real size`);
    return Number(value);
  }

  skip(bytes: number, what: string): void {
    this.need(bytes, what);
    this.pos += bytes;
  }
}

function malformed(detail: string): StateFormatError {
  return new StateFormatError("STATE_MALFORMED", `the state is not one kvkeep can take apart: ${detail}. Keep it whole (or drop it if it fails to load).`);
}

function unsupported(detail: string): StateFormatError {
  return new StateFormatError("STATE_UNSUPPORTED", `kvkeep does not split this state: ${detail}. It is kept whole.`);
}

/**
 * Read a sequence state's layout, checking every count and size against the bytes. Throws a
 * StateFormatError (see its codes) for anything kvkeep does not fully understand.
 */
export function parseSeqState(state: Uint8Array): SeqStateLayout {
  const r = new Reader(state);
  r.need(STATE_HEAD_BYTES, "the header");
  const magic = r.u32("the magic");
  if (magic !== SEQ_STATE_MAGIC) {
    throw new StateFormatError("STATE_NOT_SEQUENCE", `not a llama.cpp sequence state (magic 0x${magic.toString(16).padStart(8, "0")}, expected 0x67677371 "ggsq").`);
  }
  const version = r.u32("the version");
  if (version !== SEQ_STATE_VERSION) {
    throw new StateFormatError(
      "STATE_VERSION_UNKNOWN",
      `the sequence state is version ${version}; kvkeep has verified only version ${SEQ_STATE_VERSION} (node-llama-cpp 3.22.1). It is kept whole; re-verify the format (docs/chunks-format.md) before splitting this version.`,
    );
  }
  const tokenCount = r.u32("the token count");
  r.need(4 * tokenCount, `${tokenCount} tokens`);
  const tokens = new Int32Array(tokenCount);
  for (let i = 0; i < tokenCount; i++) tokens[i] = r.view.getInt32(r.pos + 4 * i, true);
  r.pos += 4 * tokenCount;

  const streamsOffset = r.pos;
  const nStream = r.u32("the stream count");
  if (nStream === 0 || nStream > MAX_STREAMS) throw malformed(`${nStream} streams (llama.cpp has 1 to ${MAX_STREAMS})`);

  let holder = -1;
  let seqId = 0;
  let cellsOffset = -1;
  let sectionEnd = -1;
  let geometry: KvGeometry | null = null;
  let kOffsets: number[] = [];
  let vOffsets: number[] = [];
  let positionsAreIndexes = true;

  for (let s = 0; s < nStream; s++) {
    const cellCount = r.u32(`stream ${s}'s cell count`);
    if (cellCount === 0) continue;
    if (holder !== -1) throw unsupported(`streams ${holder} and ${s} both hold cells (a whole-context state, not one sequence's)`);
    holder = s;
    if (cellCount !== tokenCount) throw malformed(`it lists ${tokenCount} tokens but holds ${cellCount} KV cells`);

    cellsOffset = r.pos;
    r.need(CELL_BYTES * cellCount, `${cellCount} cells`);
    for (let i = 0; i < cellCount; i++) {
      const at = r.pos + CELL_BYTES * i;
      const pos = r.view.getInt32(at, true);
      const nSeq = r.view.getUint32(at + 4, true);
      const id = r.view.getInt32(at + 8, true);
      if (nSeq !== 1) throw unsupported(`cell ${i} belongs to ${nSeq} sequences (a sequence state has exactly 1 per cell)`);
      if (i === 0) {
        if (id < 0 || id >= MAX_STREAMS) throw malformed(`cell 0 has sequence id ${id}`);
        seqId = id;
      } else if (id !== seqId) {
        throw unsupported(`cells of sequences ${seqId} and ${id} in one state`);
      }
      if (pos !== i) positionsAreIndexes = false;
    }
    r.pos += CELL_BYTES * cellCount;

    const vTransField = r.u32("v_trans");
    if (vTransField > 1) throw malformed(`v_trans is ${vTransField}`);
    const vTrans = vTransField === 1;
    const nLayer = r.u32("the layer count");
    if (nLayer === 0 || nLayer > MAX_LAYERS) throw malformed(`${nLayer} layers`);

    const kHeads: { type: number; row: number }[] = [];
    kOffsets = [];
    for (let l = 0; l < nLayer; l++) {
      const type = r.i32(`layer ${l}'s K type`);
      const row = r.u64(`layer ${l}'s K row size`);
      if (type < 0 || row === 0) throw malformed(`layer ${l}'s K has type ${type} and row size ${row}`);
      kOffsets.push(r.pos);
      r.skip(row * cellCount, `layer ${l}'s K rows`);
      kHeads.push({ type, row });
    }
    const layers: LayerKv[] = [];
    vOffsets = [];
    for (let l = 0; l < nLayer; l++) {
      const vType = r.i32(`layer ${l}'s V type`);
      const k = kHeads[l]!;
      if (vType < 0) throw malformed(`layer ${l}'s V has type ${vType}`);
      if (!vTrans) {
        const row = r.u64(`layer ${l}'s V row size`);
        if (row === 0) throw malformed(`layer ${l}'s V row size is 0`);
        vOffsets.push(r.pos);
        r.skip(row * cellCount, `layer ${l}'s V rows`);
        layers.push({ kType: k.type, kRowBytes: k.row, vType, vRowBytes: row, vElementBytes: 0, vWidth: 0 });
      } else {
        const element = r.u32(`layer ${l}'s V element size`);
        const width = r.u32(`layer ${l}'s V width`);
        if (element === 0 || width === 0) throw malformed(`layer ${l}'s transposed V has element size ${element} and width ${width}`);
        vOffsets.push(r.pos);
        r.skip(element * width * cellCount, `layer ${l}'s V elements`);
        layers.push({ kType: k.type, kRowBytes: k.row, vType, vRowBytes: element * width, vElementBytes: element, vWidth: width });
      }
    }
    sectionEnd = r.pos;
    geometry = makeGeometry(vTrans, layers);
  }

  if (r.pos !== state.byteLength) {
    throw new StateFormatError(
      "STATE_TRAILING_BYTES",
      `${state.byteLength - r.pos} bytes follow the state's KV section (offset ${r.pos}): a second section (a sliding-window model), a recurrent or hybrid model's state, or garbage. It is kept whole.`,
    );
  }
  if (holder === -1 && tokenCount !== 0) throw malformed(`it lists ${tokenCount} tokens but no stream holds cells`);

  const empty = holder === -1;
  const end = empty ? r.pos : sectionEnd;
  return {
    version,
    byteLength: state.byteLength,
    tokenCount,
    tokens,
    placement: { nStream, streamIndex: empty ? 0 : holder, seqId },
    geometry,
    streamsOffset,
    cellsOffset: empty ? end : cellsOffset,
    sectionEnd: end,
    kOffsets,
    vOffsets,
    positionsAreIndexes,
  };
}

function makeGeometry(vTrans: boolean, layers: readonly LayerKv[]): KvGeometry {
  let perToken = 0;
  for (const layer of layers) perToken += layer.kRowBytes + layer.vRowBytes;
  return { vTrans, layers, kvBytesPerToken: perToken };
}

// ---------------------------------------------------------------------------
// Geometry: encoded as the state's own header fields, for manifests and identities

/**
 * The geometry as bytes: u32 v_trans, u32 n_layer, every layer's K header (i32 type, u64 row
 * bytes), every layer's V header (i32 type, u64 row bytes; or transposed: i32 type, u32
 * element bytes, u32 width) — exactly the header fields of the state's KV section.
 */
export function encodeKvGeometry(geometry: KvGeometry): Buffer {
  const n = geometry.layers.length;
  const out = Buffer.alloc(8 + 24 * n);
  out.writeUInt32LE(geometry.vTrans ? 1 : 0, 0);
  out.writeUInt32LE(n, 4);
  let at = 8;
  for (const layer of geometry.layers) {
    out.writeInt32LE(layer.kType, at);
    out.writeBigUInt64LE(BigInt(layer.kRowBytes), at + 4);
    at += 12;
  }
  for (const layer of geometry.layers) {
    at = writeVHeader(out, at, geometry.vTrans, layer);
  }
  return out;
}

function writeVHeader(out: Buffer, at: number, vTrans: boolean, layer: LayerKv): number {
  out.writeInt32LE(layer.vType, at);
  if (vTrans) {
    out.writeUInt32LE(layer.vElementBytes, at + 4);
    out.writeUInt32LE(layer.vWidth, at + 8);
  } else {
    out.writeBigUInt64LE(BigInt(layer.vRowBytes), at + 4);
  }
  return at + 12;
}

/** The inverse of encodeKvGeometry (STATE_MALFORMED for bytes it did not make). */
export function decodeKvGeometry(bytes: Uint8Array): KvGeometry {
  const r = new Reader(bytes);
  const vTransField = r.u32("v_trans");
  const n = r.u32("the layer count");
  if (vTransField > 1 || n === 0 || n > MAX_LAYERS || bytes.byteLength !== 8 + 24 * n) throw malformed("not an encoded KV geometry");
  const ks: { type: number; row: number }[] = [];
  for (let l = 0; l < n; l++) ks.push({ type: r.i32("K type"), row: r.u64("K row") });
  const layers: LayerKv[] = [];
  for (let l = 0; l < n; l++) {
    const vType = r.i32("V type");
    const k = ks[l]!;
    if (vTransField === 1) {
      const element = r.u32("V element");
      const width = r.u32("V width");
      layers.push({ kType: k.type, kRowBytes: k.row, vType, vRowBytes: element * width, vElementBytes: element, vWidth: width });
    } else {
      const row = r.u64("V row");
      layers.push({ kType: k.type, kRowBytes: k.row, vType, vRowBytes: row, vElementBytes: 0, vWidth: 0 });
    }
  }
  for (const layer of layers) {
    if (layer.kType < 0 || layer.vType < 0 || layer.kRowBytes === 0 || layer.vRowBytes === 0) throw malformed("an encoded KV geometry with an empty layer");
  }
  return makeGeometry(vTransField === 1, layers);
}

/** XXH64 of the encoded geometry; 0 for none (an empty state). Ties a chunk to the geometry it was cut from. */
export function geometryDigest(geometry: KvGeometry | null): bigint {
  return geometry === null ? 0n : xxh64(encodeKvGeometry(geometry));
}

// ---------------------------------------------------------------------------
// Spans: a run of tokens, wherever its bytes are (a state, or a chunk)

interface Span {
  readonly count: number;
  readonly tokens: Uint8Array;
  /** Per layer: the run's K rows. */
  readonly k: readonly Uint8Array[];
  /** Per layer: the run's V rows (v_trans 0), or its elements of each of the E rows (v_trans 1, E views). */
  readonly v: readonly (readonly Uint8Array[])[];
}

function stateSpan(state: Uint8Array, layout: SeqStateLayout, from: number, to: number): Span {
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

function chunkMismatch(detail: string): StateFormatError {
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

function checkChecksum(chunk: Uint8Array, header: ChunkHeader): void {
  if (header.checksum !== null && xxh64(chunk.subarray(CHUNK_HEADER_BYTES)) !== header.checksum) {
    throw chunkMismatch(`its checksum does not match its bytes (chunk at position ${header.firstPosition})`);
  }
}

function checkChunkFits(chunk: Uint8Array, header: ChunkHeader, geometry: KvGeometry | null, digest: bigint): void {
  if (header.geometryDigest !== digest) throw chunkMismatch("it was cut from a state of another KV geometry (model, KV types or flash-attention layout)");
  const expected = chunkByteLength(geometry, header.tokenCount);
  if (chunk.byteLength !== expected) {
    throw chunkMismatch(`${chunk.byteLength} bytes where ${header.tokenCount} tokens take ${expected} (a torn or foreign chunk)`);
  }
}

function chunkSpan(chunk: Uint8Array, header: ChunkHeader, geometry: KvGeometry | null): Span {
  const t = header.tokenCount;
  let at = CHUNK_HEADER_BYTES;
  const tokens = chunk.subarray(at, at + 4 * t);
  at += 4 * t;
  const k: Uint8Array[] = [];
  const v: Uint8Array[][] = [];
  if (geometry !== null) {
    for (const layer of geometry.layers) {
      k.push(chunk.subarray(at, at + t * layer.kRowBytes));
      at += t * layer.kRowBytes;
    }
    for (const layer of geometry.layers) {
      if (!geometry.vTrans) {
        v.push([chunk.subarray(at, at + t * layer.vRowBytes)]);
        at += t * layer.vRowBytes;
      } else {
        const rows: Uint8Array[] = [];
        const run = t * layer.vElementBytes;
        for (let j = 0; j < layer.vWidth; j++) {
          rows.push(chunk.subarray(at, at + run));
          at += run;
        }
        v.push(rows);
      }
    }
  }
  return { count: t, tokens, k, v };
}

/** A chunk's bytes in payload order: tokens, every layer's K, every layer's V. */
function spanPayload(span: Span): Uint8Array[] {
  const parts: Uint8Array[] = [span.tokens, ...span.k];
  for (const rows of span.v) parts.push(...rows);
  return parts;
}

function concat(parts: readonly Uint8Array[], total: number): Buffer {
  const out = Buffer.allocUnsafe(total);
  let at = 0;
  for (const part of parts) {
    out.set(part, at);
    at += part.byteLength;
  }
  if (at !== total) throw new Error(`kvkeep: assembled ${at} bytes where ${total} were planned`);
  return out;
}

function encodeChunk(span: Span, firstPosition: number, digest: bigint, checksum: boolean): Buffer {
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
function spanPrefix(span: Span, count: number, geometry: KvGeometry | null): Span {
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

// ---------------------------------------------------------------------------
// Splitting

export interface SplitOptions {
  /** Tokens per chunk (default 256). */
  readonly chunkTokens?: number;
  /** Encode only chunks from this index on (the caller already holds the earlier ones). Default 0. */
  readonly skipChunks?: number;
  /** Record an XXH64 of each chunk's payload in its header (default true). */
  readonly checksums?: boolean;
}

export interface SplitSeqState {
  readonly layout: SeqStateLayout;
  readonly chunkTokens: number;
  /** The full chunks, from index `skipChunks`: chunk i holds tokens [i·chunkTokens, (i+1)·chunkTokens). */
  readonly chunks: readonly Buffer[];
  /** The last partial chunk: the remaining tokenCount mod chunkTokens tokens (possibly none). */
  readonly tail: Buffer;
}

function checkChunkTokens(chunkTokens: number): void {
  if (!Number.isSafeInteger(chunkTokens) || chunkTokens < 1 || chunkTokens > MAX_CHUNK_TOKENS) {
    throw new RangeError(`chunkTokens must be an integer in [1, ${MAX_CHUNK_TOKENS}], got ${chunkTokens}`);
  }
}

function requireCuttable(layout: SeqStateLayout): void {
  if (!layout.positionsAreIndexes) {
    throw new StateFormatError(
      "STATE_NOT_CUTTABLE",
      "the state's cells are not positions 0..n-1 in order (cut back and re-evaluated out of order, or shifted): no cut of it is exact, so it is kept whole.",
    );
  }
}

/**
 * Split a state into full chunks of `chunkTokens` tokens and a tail. Throws a
 * StateFormatError for a state kvkeep does not fully understand (it is then kept whole).
 */
export function splitSeqState(state: Uint8Array, options: SplitOptions = {}): SplitSeqState {
  const chunkTokens = options.chunkTokens ?? DEFAULT_CHUNK_TOKENS;
  checkChunkTokens(chunkTokens);
  const skip = options.skipChunks ?? 0;
  if (!Number.isSafeInteger(skip) || skip < 0) throw new RangeError(`skipChunks must be a non-negative integer, got ${skip}`);
  const checksums = options.checksums ?? true;
  const layout = parseSeqState(state);
  requireCuttable(layout);
  const digest = geometryDigest(layout.geometry);
  const full = Math.floor(layout.tokenCount / chunkTokens);
  const chunks: Buffer[] = [];
  for (let i = skip; i < full; i++) {
    const from = i * chunkTokens;
    chunks.push(encodeChunk(stateSpan(state, layout, from, from + chunkTokens), from, digest, checksums));
  }
  const tailFrom = full * chunkTokens;
  const tail = encodeChunk(stateSpan(state, layout, tailFrom, layout.tokenCount), tailFrom, digest, checksums);
  return { layout, chunkTokens, chunks, tail };
}

// ---------------------------------------------------------------------------
// Assembling a state (join, cut, placement)

function u32(value: number): Buffer {
  const b = Buffer.allocUnsafe(4);
  b.writeUInt32LE(value, 0);
  return b;
}

/**
 * `given` over `fallback`. A stream index not given follows the sequence id when there are
 * several streams (llama.cpp keeps sequence s in stream s unless the cache is unified), else 0.
 */
function placementOf(given: Partial<StreamPlacement> | undefined, fallback: StreamPlacement): StreamPlacement {
  const nStream = given?.nStream ?? fallback.nStream;
  const seqId = given?.seqId ?? fallback.seqId;
  const streamIndex = given?.streamIndex ?? (nStream === 1 ? 0 : given?.seqId ?? fallback.streamIndex);
  if (!Number.isSafeInteger(nStream) || nStream < 1 || nStream > MAX_STREAMS) throw new RangeError(`nStream must be in [1, ${MAX_STREAMS}], got ${nStream}`);
  if (!Number.isSafeInteger(streamIndex) || streamIndex < 0 || streamIndex >= nStream) throw new RangeError(`streamIndex must be in [0, ${nStream}), got ${streamIndex}`);
  if (!Number.isSafeInteger(seqId) || seqId < 0 || seqId >= MAX_STREAMS) throw new RangeError(`seqId must be in [0, ${MAX_STREAMS}), got ${seqId}`);
  return { nStream, streamIndex, seqId };
}

/** The cells of a cuttable state: (i, 1, seqId) for i in 0..n-1. */
function cellsFor(count: number, seqId: number): Buffer {
  const out = Buffer.allocUnsafe(CELL_BYTES * count);
  for (let i = 0; i < count; i++) {
    out.writeInt32LE(i, CELL_BYTES * i);
    out.writeUInt32LE(1, CELL_BYTES * i + 4);
    out.writeInt32LE(seqId, CELL_BYTES * i + 8);
  }
  return out;
}

/** A state as a list of byte views (for a gather write) and its length. */
export interface StateParts {
  readonly parts: Uint8Array[];
  readonly byteLength: number;
  readonly tokenCount: number;
}

function assemble(spans: readonly Span[], geometry: KvGeometry | null, placement: StreamPlacement): StateParts {
  let n = 0;
  for (const span of spans) n += span.count;
  const parts: Uint8Array[] = [];
  const head = Buffer.allocUnsafe(STATE_HEAD_BYTES);
  head.writeUInt32LE(SEQ_STATE_MAGIC, 0);
  head.writeUInt32LE(SEQ_STATE_VERSION, 4);
  head.writeUInt32LE(n, 8);
  parts.push(head);
  for (const span of spans) parts.push(span.tokens);
  parts.push(u32(placement.nStream));
  if (n === 0) {
    parts.push(Buffer.alloc(4 * placement.nStream));
  } else {
    if (geometry === null) throw chunkMismatch(`${n} tokens joined without a KV geometry`);
    parts.push(Buffer.alloc(4 * placement.streamIndex), u32(n), cellsFor(n, placement.seqId));
    const kvHead = Buffer.allocUnsafe(8);
    kvHead.writeUInt32LE(geometry.vTrans ? 1 : 0, 0);
    kvHead.writeUInt32LE(geometry.layers.length, 4);
    parts.push(kvHead);
    geometry.layers.forEach((layer, l) => {
      const kHead = Buffer.allocUnsafe(12);
      kHead.writeInt32LE(layer.kType, 0);
      kHead.writeBigUInt64LE(BigInt(layer.kRowBytes), 4);
      parts.push(kHead);
      for (const span of spans) parts.push(span.k[l]!);
    });
    geometry.layers.forEach((layer, l) => {
      const vHead = Buffer.allocUnsafe(12);
      writeVHeader(vHead, 0, geometry.vTrans, layer);
      parts.push(vHead);
      const rows = geometry.vTrans ? layer.vWidth : 1;
      for (let j = 0; j < rows; j++) for (const span of spans) parts.push(span.v[l]![j]!);
    });
    parts.push(Buffer.alloc(4 * (placement.nStream - placement.streamIndex - 1)));
  }
  let byteLength = 0;
  for (const part of parts) byteLength += part.byteLength;
  return { parts: parts.filter((p) => p.byteLength > 0), byteLength, tokenCount: n };
}

export interface JoinInput {
  /** The geometry every piece was cut under (null only when every piece is empty). */
  readonly geometry: KvGeometry | null;
  /** Encoded chunks in order from position 0, the tail last. */
  readonly pieces: readonly Uint8Array[];
  /** Where the cells go (default: 1 stream, stream 0, sequence 0). */
  readonly placement?: Partial<StreamPlacement>;
  /** Check each piece's checksum (those that carry one) before using it. Default false. */
  readonly verifyChecksums?: boolean;
}

const DEFAULT_PLACEMENT: StreamPlacement = { nStream: 1, streamIndex: 0, seqId: 0 };

/**
 * A chain of chunks and a tail as a state, as byte views in order (no copy of the KV; hand
 * them to a gather write such as MemoryFile.write). CHUNK_MISMATCH when a piece is not the
 * next run of tokens under this geometry.
 */
export function joinSeqStateParts(input: JoinInput): StateParts {
  const placement = placementOf(input.placement, DEFAULT_PLACEMENT);
  const spans: Span[] = [];
  const digest = geometryDigest(input.geometry);
  let position = 0;
  input.pieces.forEach((piece, i) => {
    const header = readChunkHeader(piece);
    checkChunkFits(piece, header, input.geometry, digest);
    if (input.verifyChecksums) checkChecksum(piece, header);
    if (header.firstPosition !== position) {
      throw chunkMismatch(`piece ${i} starts at position ${header.firstPosition} where the chain has reached ${position}`);
    }
    position += header.tokenCount;
    spans.push(chunkSpan(piece, header, input.geometry));
  });
  return assemble(spans, input.geometry, placement);
}

/** joinSeqStateParts as one Buffer: the state llama.cpp saved, byte for byte. */
export function joinSeqState(input: JoinInput): Buffer {
  const { parts, byteLength } = joinSeqStateParts(input);
  return concat(parts, byteLength);
}

export interface CutOptions {
  /** Where the cells go (default: where they are). */
  readonly placement?: Partial<StreamPlacement>;
}

/**
 * The state of the first `tokenCount` tokens, byte-identical to what llama.cpp saves after
 * evaluating just those (STATE_NOT_CUTTABLE when the cells are out of order).
 */
export function cutSeqState(state: Uint8Array, tokenCount: number, options: CutOptions = {}): Buffer {
  const layout = parseSeqState(state);
  if (!Number.isSafeInteger(tokenCount) || tokenCount < 0 || tokenCount > layout.tokenCount) {
    throw new RangeError(`tokenCount must be an integer in [0, ${layout.tokenCount}], got ${tokenCount}`);
  }
  requireCuttable(layout);
  const placement = placementOf(options.placement, layout.placement);
  const { parts, byteLength } = assemble([stateSpan(state, layout, 0, tokenCount)], layout.geometry, placement);
  return concat(parts, byteLength);
}

/**
 * The same state for a context of another stream count (or another stream / sequence id):
 * llama.cpp refuses a state whose n_stream differs from the context's. Cells, tokens and KV
 * are copied as they are (any parseable state, cuttable or not); only the stream fields and,
 * when `seqId` is given, each cell's sequence id change.
 */
export function withPlacement(state: Uint8Array, placement: Partial<StreamPlacement>): Buffer {
  const layout = parseSeqState(state);
  const target = placementOf(placement, layout.placement);
  const prefix = state.subarray(0, layout.streamsOffset);
  if (layout.tokenCount === 0) return concat([prefix, u32(target.nStream), Buffer.alloc(4 * target.nStream)], prefix.byteLength + 4 + 4 * target.nStream);
  const section = Buffer.from(state.subarray(layout.cellsOffset, layout.sectionEnd));
  if (placement.seqId !== undefined) for (let i = 0; i < layout.tokenCount; i++) section.writeInt32LE(target.seqId, CELL_BYTES * i + 8);
  const parts = [
    prefix,
    u32(target.nStream),
    Buffer.alloc(4 * target.streamIndex),
    u32(layout.tokenCount),
    section,
    Buffer.alloc(4 * (target.nStream - target.streamIndex - 1)),
  ];
  let total = 0;
  for (const part of parts) total += part.byteLength;
  return concat(parts, total);
}
