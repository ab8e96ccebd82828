/**
 * Content-addressed chunk identities. Pure.
 *
 * A chunk's KV depends on every earlier token and on everything the engine computed it with,
 * so a chunk is reusable only after the identical prefix, at the same positions, under the
 * same state context. Its identity chains:
 *
 *   context = H("kvkeep/chunk-state-context" ‖ fields: model fingerprint, KV geometry (K/V
 *             types, row sizes, V transposition = flash-attention layout), rotation setting,
 *             sequence count, chunk size, state and chunk format versions, extras)
 *   id(0)   = H("kvkeep/chunk" ‖ context ‖ 16 zero bytes ‖ tokens of chunk 0)
 *   id(i)   = H("kvkeep/chunk" ‖ context ‖ id(i-1)        ‖ tokens of chunk i)
 *
 * H is SHA-256 truncated to 128 bits. Why not XXH64 (even twice, seeded two ways): a
 * collision here is not a cache miss but a conversation resumed on another conversation's
 * KV — a wrong answer, or one user's tokens steering another's replies where several share a
 * scope. Nothing else in kvkeep has that failure mode. XXH64 is built for speed, not against
 * chosen inputs (tokens are chosen by users), and two seeds of one function are not two
 * independent functions. SHA-256's cost does not matter here: an identity hashes ~1 KiB (a
 * chunk's tokens, never its KV), ~32 chunks for an 8 000-token conversation, microseconds
 * (bench/chunks.ts prints it). 128 bits: the birthday bound for random collisions is 2^64
 * chunks, and a chosen collision with someone else's chunk is a second preimage (2^128).
 */
import { createHash } from "node:crypto";
import { CHUNK_FORMAT_VERSION } from "./chunk-codec.js";
import { encodeKvGeometry, type KvGeometry } from "./kv-geometry.js";
import { SEQ_STATE_VERSION } from "./seq-state-parser.js";

/** A chunk identity: 32 lowercase hex characters (128 bits). Safe as a file name. */
export type ChunkId = string;

export const CHUNK_ID_HEX_LENGTH = 32;
const ID_BYTES = 16;
const CONTEXT_TAG = "kvkeep/chunk-state-context/1";
const CHUNK_TAG = "kvkeep/chunk/1";

/** What a chunk's KV depends on besides its tokens and the tokens before it. */
export interface StateContextParts {
  /**
   * The model and context fingerprint; it must cover the weights (a state of another model of
   * the same shape loads silently and generates garbage).
   */
  readonly modelFingerprint: string;
  /** The KV section's geometry, as parsed from a state of this context. */
  readonly geometry: KvGeometry;
  /**
   * The Hadamard rotation llama.cpp applies to quantized K/V (on unless LLAMA_ATTN_ROT_DISABLE
   * is set): see attentionRotationSetting. A q8_0 state written rotated and read unrotated
   * loads silently and generates garbage.
   */
  readonly attentionRotation: string;
  /** The context's sequence count (its n_stream). */
  readonly sequences: number;
  /** Tokens per chunk. */
  readonly chunkTokens: number;
  /** Anything else the adapter knows the KV depends on (engine build, RoPE overrides, ...). Order matters. */
  readonly extra?: readonly string[];
}

/** A state context: its digest (32 hex chars) and the chunk size it implies. */
export interface StateContext {
  readonly digest: string;
  readonly chunkTokens: number;
}

/**
 * llama.cpp reads LLAMA_ATTN_ROT_DISABLE with atoi() when it creates a KV cache: a non-zero
 * integer prefix disables the rotation. "disabled" or "default", as llama.cpp will see it.
 */
export function attentionRotationSetting(env: Readonly<Record<string, string | undefined>>): "disabled" | "default" {
  const raw = env.LLAMA_ATTN_ROT_DISABLE;
  if (raw === undefined) return "default";
  const match = /^[\t\n\v\f\r ]*([+-]?\d+)/.exec(raw);
  return match !== null && Number.parseInt(match[1]!, 10) !== 0 ? "disabled" : "default";
}

function lengthPrefixed(bytes: Uint8Array): Uint8Array[] {
  const length = Buffer.allocUnsafe(4);
  length.writeUInt32LE(bytes.byteLength, 0);
  return [length, bytes];
}

function field(text: string): Uint8Array[] {
  return lengthPrefixed(Buffer.from(text, "utf8"));
}

/** The state context's digest. Every field is length-prefixed, so no two field lists hash alike by concatenation. */
export function stateContext(parts: StateContextParts): StateContext {
  const { chunkTokens, sequences } = parts;
  if (!Number.isSafeInteger(chunkTokens) || chunkTokens < 1) throw new RangeError(`chunkTokens must be a positive integer, got ${chunkTokens}`);
  if (!Number.isSafeInteger(sequences) || sequences < 1) throw new RangeError(`sequences must be a positive integer, got ${sequences}`);
  const hash = createHash("sha256");
  const pieces: Uint8Array[] = [
    ...field(CONTEXT_TAG),
    ...field(`state-version=${SEQ_STATE_VERSION}`),
    ...field(`chunk-version=${CHUNK_FORMAT_VERSION}`),
    ...field(`model=${parts.modelFingerprint}`),
    ...lengthPrefixed(encodeKvGeometry(parts.geometry)),
    ...field(`rotation=${parts.attentionRotation}`),
    ...field(`sequences=${sequences}`),
    ...field(`chunk-tokens=${chunkTokens}`),
    ...field(`extra=${(parts.extra ?? []).length}`),
  ];
  for (const extra of parts.extra ?? []) pieces.push(...field(extra));
  for (const piece of pieces) hash.update(piece);
  return { digest: hash.digest("hex").slice(0, 2 * ID_BYTES), chunkTokens };
}

function checkId(id: string, what: string): Buffer {
  if (typeof id !== "string" || !/^[0-9a-f]{32}$/.test(id)) throw new TypeError(`${what} must be 32 lowercase hex characters, got ${JSON.stringify(id)}`);
  return Buffer.from(id, "hex");
}

function tokenBytes(tokens: ArrayLike<number>): Buffer {
  const out = Buffer.allocUnsafe(4 * tokens.length);
  for (let i = 0; i < tokens.length; i++) {
    const token = tokens[i]!;
    if (!Number.isInteger(token) || token < -0x80000000 || token > 0x7fffffff) throw new TypeError(`token ${i} is not a 32-bit integer: ${token}`);
    out.writeInt32LE(token, 4 * i);
  }
  return out;
}

/** The identity of the chunk holding `tokens` after the chunk `parent` (null: the first chunk). */
export function chunkId(context: StateContext, parent: ChunkId | null, tokens: ArrayLike<number>): ChunkId {
  if (tokens.length === 0 || tokens.length > context.chunkTokens) {
    throw new RangeError(`a chunk holds 1 to ${context.chunkTokens} tokens, got ${tokens.length}`);
  }
  return idOfTokenBytes(checkId(context.digest, "the context digest"), parent === null ? null : checkId(parent, "the parent id"), tokenBytes(tokens));
}

function idOfTokenBytes(context: Buffer, parent: Buffer | null, tokens: Uint8Array): ChunkId {
  const hash = createHash("sha256");
  for (const piece of field(CHUNK_TAG)) hash.update(piece);
  hash.update(context);
  hash.update(parent ?? Buffer.alloc(ID_BYTES));
  const count = Buffer.allocUnsafe(4);
  count.writeUInt32LE(tokens.byteLength / 4, 0);
  hash.update(count);
  hash.update(tokens);
  return hash.digest("hex").slice(0, 2 * ID_BYTES);
}

/**
 * The identities of every full chunk of `tokens` (⌊n / chunkTokens⌋ of them), in order; the
 * remaining tokens are the tail, which has no identity (it is rewritten every turn). Two
 * token lists get the same first k ids exactly when they share their first k chunks.
 */
export function chunkChain(context: StateContext, tokens: ArrayLike<number>): ChunkId[] {
  const digest = checkId(context.digest, "the context digest");
  const bytes = tokenBytes(tokens);
  const step = 4 * context.chunkTokens;
  const ids: ChunkId[] = [];
  let parent: Buffer | null = null;
  for (let at = 0; at + step <= bytes.byteLength; at += step) {
    const id = idOfTokenBytes(digest, parent, bytes.subarray(at, at + step));
    ids.push(id);
    parent = Buffer.from(id, "hex");
  }
  return ids;
}
