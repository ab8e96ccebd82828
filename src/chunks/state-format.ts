/**
 * llama.cpp's sequence state, as node-llama-cpp 3.22.1 writes it (`saveStateToFile`), taken
 * apart into token chunks and put back together byte-identically. Pure: bytes in, bytes out.
 * docs/chunks-format.md has the layout and what was verified on the real engine.
 *
 * This file is the chunk layer's front: what the rest of kvkeep imports. Each job is its own
 * module: seq-state-parser.ts (read a state's layout), kv-geometry.ts (the KV section's
 * header fields and their encoding), chunk-codec.ts (the kvkc chunk), state-split.ts (a
 * state into chunks), state-assembly.ts (join, cut, placement), state-bytes.ts (the checked
 * reader they share), state-gather.ts (a join planned as file ranges, for a native gather),
 * state-ranges.ts (the bytes of a state a commit needs to read).
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
 * A chunk is kvkeep's own encoding of a run of tokens (chunk-codec.ts): a 32-byte header,
 * then the tokens, every layer's K rows, every layer's V (rows, or for a transposed V each of
 * the E element rows' run). The cells are not stored: in a state kvkeep splits they are
 * exactly (position i, 1, seq id), regenerated on join from the placement.
 */
export {
  type ChunkHeader,
  CHUNK_FORMAT_VERSION,
  CHUNK_HEADER_BYTES,
  CHUNK_MAGIC,
  chunkByteLength,
  DEFAULT_CHUNK_TOKENS,
  MAX_CHUNK_TOKENS,
  readChunkHeader,
  readChunkTokens,
  truncateChunk,
  verifyChunk,
} from "./chunk-codec.js";
export { decodeKvGeometry, encodeKvGeometry, geometryDigest, type KvGeometry, type LayerKv } from "./kv-geometry.js";
export { MAX_STREAMS, parseSeqState, SEQ_STATE_MAGIC, SEQ_STATE_VERSION, type SeqStateLayout, type StreamPlacement } from "./seq-state-parser.js";
export { type CutOptions, cutSeqState, type JoinInput, joinSeqState, joinSeqStateParts, type StateParts, withPlacement } from "./state-assembly.js";
export { type GatherPiece, type GatherPlan, gatherPlan, type GatherPlanInput } from "./state-gather.js";
export { type SplitOptions, type SplitSeqState, splitSeqState } from "./state-split.js";
export { type ByteRanges, stateHeadRanges, stateRowRanges } from "./state-ranges.js";
