/** Splitting a sequence state into full kvkc chunks and a tail (pure). */
import { DEFAULT_CHUNK_TOKENS, encodeChunk, MAX_CHUNK_TOKENS, stateSpan } from "./chunk-codec.js";
import { geometryDigest } from "./kv-geometry.js";
import { parseSeqState, requireCuttable, type SeqStateLayout } from "./seq-state-parser.js";

export interface SplitOptions {
  /** Tokens per chunk (default DEFAULT_CHUNK_TOKENS). */
  readonly chunkTokens?: number;
  /** Encode only chunks from this index on (the caller already holds the earlier ones). Default 0. */
  readonly skipChunks?: number;
  /** Record an XXH64 of each chunk's payload in its header (default true). */
  readonly checksums?: boolean;
  /** The state's layout, when the caller parsed it already (then only the rows it splits are read). */
  readonly layout?: SeqStateLayout | undefined;
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
  const layout = options.layout ?? parseSeqState(state);
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
