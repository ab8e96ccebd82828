/**
 * Chunked conversations for chunk-file tests: a synthetic sequence state (written from the
 * layout table, test/chunks/synthetic-state.ts) split by kvkeep's chunk layer, with its state
 * context and chunk ids — what a chunked commit would write.
 */
import { chunkChain, stateContext, type StateContext } from "../../src/chunks/chunk-id.js";
import { type KvGeometry, splitSeqState } from "../../src/chunks/state-format.js";
import { buildState } from "../chunks/synthetic-state.js";

export const CHUNK_TOKENS = 16;

export interface Conversation {
  readonly context: StateContext;
  readonly geometry: KvGeometry;
  readonly ids: string[];
  /** The full chunks, in order (chunk i has id ids[i]). */
  readonly chunks: Buffer[];
  readonly tail: Buffer;
  readonly tokenCount: number;
}

/**
 * A conversation of `tokenCount` tokens; two with the same `salt` share everything, and a
 * conversation with `salt` ≠ 0 from `saltFrom` on shares the first ⌊saltFrom / 16⌋ chunks
 * with the salt-0 one. `scope` goes into the context as the store's scope id does.
 */
export function conversation(tokenCount: number, options: { salt?: number; saltFrom?: number; scope?: string } = {}): Conversation {
  const state = buildState({
    tokenCount,
    vTrans: false,
    layers: [
      { kType: 1, kRowBytes: 24, vType: 1, vRowBytes: 24 },
      { kType: 1, kRowBytes: 24, vType: 1, vRowBytes: 24 },
    ],
    salt: options.salt ?? 0,
    saltFrom: options.saltFrom ?? 0,
  });
  const split = splitSeqState(state, { chunkTokens: CHUNK_TOKENS });
  const geometry = split.layout.geometry!;
  const context = stateContext({
    modelFingerprint: "test-model",
    geometry,
    attentionRotation: "default",
    sequences: 1,
    chunkTokens: CHUNK_TOKENS,
    extra: [options.scope ?? "-"],
  });
  const tokens = split.layout.tokens;
  return { context, geometry, ids: chunkChain(context, tokens), chunks: [...split.chunks], tail: split.tail, tokenCount };
}
