/**
 * Which bytes of a sequence state a commit needs (pure): the head (magic to the layer count),
 * every layer header and the trailing stream counts — what `parseSeqState` reads — and the
 * rows of the tokens a split encodes. A commit reads only these from the engine's saved state
 * (MemoryFile.readRanges), never the rows of the chunks it already holds.
 *
 * The head's ranges follow from the geometry and placement the state is expected to have (the
 * previous commit's): a layer header's offset depends on the rows before it. So the caller
 * parses what was read and keeps the result only when the parse gives exactly that geometry
 * and placement — then every header the parse read sat where it was expected, and was read.
 */
import type { KvGeometry } from "./kv-geometry.js";
import { CELL_BYTES, type SeqStateLayout, STATE_HEAD_BYTES, type StreamPlacement } from "./seq-state-parser.js";

/** (offset, length) pairs. */
export type ByteRanges = number[];

const LAYER_HEADER_BYTES = 12; // i32 type + u64 row size, or i32 type + u32 element size + u32 width

/**
 * The ranges `parseSeqState` reads in a state of `size` bytes and `tokenCount` tokens, if it
 * has `geometry` and `placement`; null when such a state cannot be `size` bytes long.
 */
export function stateHeadRanges(size: number, tokenCount: number, geometry: KvGeometry, placement: StreamPlacement): ByteRanges | null {
  const n = tokenCount;
  if (n === 0) return null;
  const cellsAt = STATE_HEAD_BYTES + 4 * n + 4 + 4 * (placement.streamIndex + 1);
  let at = cellsAt + CELL_BYTES * n + 8; // cells, then v_trans and the layer count
  const ranges: ByteRanges = [0, at];
  for (const layer of geometry.layers) {
    ranges.push(at, LAYER_HEADER_BYTES);
    at += LAYER_HEADER_BYTES + layer.kRowBytes * n;
  }
  for (const layer of geometry.layers) {
    ranges.push(at, LAYER_HEADER_BYTES);
    at += LAYER_HEADER_BYTES + layer.vRowBytes * n;
  }
  const trailing = 4 * (placement.nStream - placement.streamIndex - 1);
  if (at + trailing !== size) return null;
  if (trailing > 0) ranges.push(at, trailing);
  return ranges;
}

/** The ranges holding every layer's K and V rows of tokens [from, tokenCount) (what a split from there encodes). */
export function stateRowRanges(layout: SeqStateLayout, from: number): ByteRanges {
  const geometry = layout.geometry;
  const n = layout.tokenCount;
  if (geometry === null || from >= n) return [];
  const ranges: ByteRanges = [];
  geometry.layers.forEach((layer, l) => {
    ranges.push(layout.kOffsets[l]! + from * layer.kRowBytes, (n - from) * layer.kRowBytes);
  });
  geometry.layers.forEach((layer, l) => {
    const vAt = layout.vOffsets[l]!;
    if (!geometry.vTrans) {
      ranges.push(vAt + from * layer.vRowBytes, (n - from) * layer.vRowBytes);
    } else {
      const el = layer.vElementBytes;
      for (let j = 0; j < layer.vWidth; j++) ranges.push(vAt + (j * n + from) * el, (n - from) * el);
    }
  });
  return ranges;
}
