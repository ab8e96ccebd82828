/**
 * Assembling a sequence state (pure): a chain of chunks joined back into the state llama.cpp
 * saved, a state cut to its first tokens, and a state moved to another stream placement.
 */
import { checkChecksum, checkChunkFits, chunkMismatch, chunkSpan, readChunkHeader, type RowsRange, type SourceRange, type Span, stateSpan } from "./chunk-codec.js";
import { geometryDigest, type KvGeometry, writeVHeader } from "./kv-geometry.js";
import { CELL_BYTES, MAX_STREAMS, parseSeqState, requireCuttable, SEQ_STATE_MAGIC, SEQ_STATE_VERSION, STATE_HEAD_BYTES, type StreamPlacement } from "./seq-state-parser.js";
import { concat, u32 } from "./state-bytes.js";

/**
 * `given` over `fallback`. A stream index not given follows the sequence id when there are
 * several streams (llama.cpp keeps sequence s in stream s unless the cache is unified), else 0.
 */
export function placementOf(given: Partial<StreamPlacement> | undefined, fallback: StreamPlacement): StreamPlacement {
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

/**
 * A transposed V layer of every span at once, as one piece: row j of the state is row j of
 * each span's block in turn, `rows` times (what a gather plan turns into one strided run per
 * span instead of one run per span and row).
 */
export interface TransposedRows {
  readonly rows: number;
  readonly blocks: readonly RowsRange[];
  readonly byteLength: number;
}

/** A piece of a state being assembled: bytes at hand, a range of a source read later (a gather), or a transposed V layer's rows. */
export type AssemblyPiece = Uint8Array | SourceRange | TransposedRows;

/** A run of tokens whose pieces are bytes or source ranges (a Span, chunkSpanRanges or chunkSpanBlocks). */
export interface AssemblySpan {
  readonly count: number;
  readonly tokens: Uint8Array | SourceRange;
  readonly k: readonly (Uint8Array | SourceRange)[];
  /** Per layer: its V pieces (one, or one per element row when transposed), or its element rows as one block. */
  readonly v: readonly (readonly (Uint8Array | SourceRange)[] | SourceRange | RowsRange)[];
}

function assemble(spans: readonly Span[], geometry: KvGeometry | null, placement: StreamPlacement): StateParts {
  const { parts, byteLength, tokenCount } = assembleParts(spans, geometry, placement);
  return { parts: parts as Uint8Array[], byteLength, tokenCount };
}

/**
 * The state the spans make, as pieces in order: the fields kvkeep writes (head, cells, layer
 * headers) as bytes, the spans' own pieces as they are. The one statement of how a sequence
 * state is put together, for a gather write of views and for a gather plan of file ranges.
 */
export function assembleParts(
  spans: readonly AssemblySpan[],
  geometry: KvGeometry | null,
  placement: StreamPlacement,
): { parts: AssemblyPiece[]; byteLength: number; tokenCount: number } {
  let n = 0;
  for (const span of spans) n += span.count;
  const parts: AssemblyPiece[] = [];
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
      const layers = spans.map((span) => span.v[l]!);
      if (layers.every((v) => "rows" in v)) {
        const blocks = layers as RowsRange[];
        let rowBytes = 0;
        for (const block of blocks) {
          if (block.rows !== layer.vWidth) throw chunkMismatch(`a transposed V block of ${block.rows} rows where the layer has ${layer.vWidth}`);
          rowBytes += block.rowBytes;
        }
        parts.push({ rows: layer.vWidth, blocks, byteLength: rowBytes * layer.vWidth });
        return;
      }
      if (layers.some((v) => "rows" in v)) throw chunkMismatch("transposed V blocks mixed with V rows");
      const rows = geometry.vTrans ? layer.vWidth : 1;
      const listed = layers.map((v) => (Array.isArray(v) ? v : [v])) as (Uint8Array | SourceRange)[][];
      for (let j = 0; j < rows; j++) for (const pieces of listed) parts.push(pieces[j]!);
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
