/**
 * A gather plan (pure): how to assemble a sequence state from encoded chunks without holding
 * them — which byte ranges of which chunk files (and of buffers at hand: the tail, kvkeep's
 * own header fields) land where. The store hands the plan to `MemoryFile.gather`, which reads
 * each chunk file once and copies its ranges into the in-memory file the engine loads: no
 * chunk's bytes pass through JavaScript. The layout is state-assembly.ts's, the same code
 * that joins views (joinSeqStateParts), so both give the state byte for byte.
 */
import { chunkMismatch, chunkSpanBlocks, readChunkHeader } from "./chunk-codec.js";
import type { KvGeometry } from "./kv-geometry.js";
import type { StreamPlacement } from "./seq-state-parser.js";
import { assembleParts, placementOf } from "./state-assembly.js";

/** One piece of the chain: chunk file number `file` (read later), or an encoded chunk at hand. */
export type GatherPiece = { readonly file: number; readonly tokenCount: number } | { readonly bytes: Uint8Array };

export interface GatherPlanInput {
  readonly geometry: KvGeometry;
  /** The chain from position 0: full chunks (files), the tail last. */
  readonly pieces: readonly GatherPiece[];
  /** How many chunk files the pieces name (sources 0..files-1). */
  readonly files: number;
  readonly placement?: Partial<StreamPlacement> | undefined;
}

export interface GatherPlan {
  /** The state's size in bytes. */
  readonly size: number;
  readonly tokenCount: number;
  /** Buffers besides the files: source `files + i` is `literals[i]`. */
  readonly literals: Uint8Array[];
  /**
   * (source, srcOffset, dstOffset, length, count, srcStride, dstStride) 7-tuples, each file's
   * together, covering `size` exactly (MemoryFile.gather's runs): a transposed V layer of a
   * chunk is one run of `vWidth` copies, one per element row.
   */
  readonly runs: Float64Array;
}

const DEFAULT_PLACEMENT: StreamPlacement = { nStream: 1, streamIndex: 0, seqId: 0 };

/**
 * The plan for the state the pieces make. A file piece's bytes are only known later: the
 * caller checks each file's header against `tokenCount` and its position (the gather returns
 * the headers) before the engine sees the state. CHUNK_MISMATCH when a piece at hand is no
 * chunk of this geometry or does not continue the chain.
 */
export function gatherPlan(input: GatherPlanInput): GatherPlan {
  const placement = placementOf(input.placement, DEFAULT_PLACEMENT);
  const literals: Uint8Array[] = [];
  let position = 0;
  const spans = input.pieces.map((piece) => {
    if ("file" in piece) {
      if (!Number.isSafeInteger(piece.file) || piece.file < 0 || piece.file >= input.files) throw new RangeError(`file must be in [0, ${input.files}), got ${piece.file}`);
      position += piece.tokenCount;
      return chunkSpanBlocks(piece.file, piece.tokenCount, input.geometry);
    }
    const header = readChunkHeader(piece.bytes);
    if (header.firstPosition !== position) throw chunkMismatch(`a piece starts at position ${header.firstPosition} where the chain has reached ${position}`);
    position += header.tokenCount;
    literals.push(piece.bytes);
    return chunkSpanBlocks(input.files + literals.length - 1, header.tokenCount, input.geometry);
  });
  const { parts, byteLength, tokenCount } = assembleParts(spans, input.geometry, placement);
  // Each source's runs in the state's order, sources in number order (the gather reads a file once).
  const bySource = new Map<number, number[]>();
  const run = (source: number, src: number, dst: number, length: number, count = 1, srcStride = 0, dstStride = 0): void => {
    let list = bySource.get(source);
    if (!list) bySource.set(source, (list = []));
    list.push(source, src, dst, length, count, srcStride, dstStride);
  };
  let at = 0;
  for (const part of parts) {
    if (part.byteLength === 0) continue;
    if (part instanceof Uint8Array) {
      literals.push(part);
      run(input.files + literals.length - 1, 0, at, part.byteLength);
    } else if ("rows" in part) {
      // Row j of the layer is row j of each block in turn: one strided run per block.
      const rowBytes = part.byteLength / part.rows;
      let inRow = 0;
      for (const block of part.blocks) {
        if (block.rowBytes > 0) run(block.source, block.offset, at + inRow, block.rowBytes, part.rows, block.rowBytes, rowBytes);
        inRow += block.rowBytes;
      }
    } else {
      run(part.source, part.offset, at, part.byteLength);
    }
    at += part.byteLength;
  }
  const sources = [...bySource.keys()].sort((a, b) => a - b);
  let total = 0;
  for (const source of sources) total += bySource.get(source)!.length;
  const flat = new Float64Array(total);
  let write = 0;
  for (const source of sources) {
    const list = bySource.get(source)!;
    flat.set(list, write);
    write += list.length;
  }
  return { size: byteLength, tokenCount, literals, runs: flat };
}
