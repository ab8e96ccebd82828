/**
 * A chunked state handed to an engine: its chunks (each verified: shape, geometry, checksum,
 * identity recomputed from its parent and tokens) and its tail joined into an in-memory file
 * the engine loads by path, closed when the engine is done. Given the prompt's tokens, only
 * what the state shares with them is read: the shared full chunks (whose identities equal the
 * prompt's own chunk identities) and the shared part of the next chunk or of the tail — a
 * borrow or a regenerate never reads the longer conversation's rest (docs/chunks-format.md).
 */
import { chunkChain, type StateContext } from "../chunks/chunk-id.js";
import { isStateFormatError } from "../chunks/errors.js";
import {
  decodeKvGeometry,
  joinSeqStateParts,
  type KvGeometry,
  readChunkTokens,
  truncateChunk,
  verifyChunk,
} from "../chunks/state-format.js";
import { KvKeepError } from "../errors.js";
import type { ChunkedState } from "../manifest/format.js";
import type { StoreContext } from "./context.js";

/** The most bytes a tail file may hold (far above any real one: a tail is under one chunk). */
export const MAX_TAIL_BYTES = 2 ** 30;

function corrupt(what: string, detail: string, cause?: unknown): KvKeepError {
  return new KvKeepError("CHUNK_CORRUPT", `${what} is not what its manifest says: ${detail}. The cache is a miss (removed; the turn starts fresh).`, { cause });
}

/** The shared leading tokens of `a` and `b[from..]`. */
function sharedTokens(a: ArrayLike<number>, b: ArrayLike<number>, from: number): number {
  const limit = Math.min(a.length, b.length - from);
  let n = 0;
  while (n < limit && a[n] === b[from + n]) n++;
  return n;
}

/** What a chunked state holds, checked: its geometry and its tail. */
export interface ChunkedSource {
  readonly chunks: ChunkedState;
  readonly geometry: KvGeometry;
  readonly tail: Buffer;
}

/** Check a chunked entry's geometry and tail (the cache file's bytes) against each other. */
export function chunkedSource(cachePath: string, chunks: ChunkedState, tail: Buffer): ChunkedSource {
  let geometry: KvGeometry;
  try {
    geometry = decodeKvGeometry(Buffer.from(chunks.geometry, "base64"));
  } catch (error) {
    throw corrupt(`the manifest of ${cachePath}`, "its KV geometry does not decode", error);
  }
  try {
    const header = verifyChunk(tail, geometry);
    const full = chunks.ids.length * chunks.chunkTokens;
    if (header.firstPosition !== full || full + header.tokenCount !== chunks.tokens) {
      throw corrupt(`the tail ${cachePath}`, `it holds tokens ${header.firstPosition}..${header.firstPosition + header.tokenCount} of a ${chunks.tokens}-token state`);
    }
  } catch (error) {
    if (isStateFormatError(error)) throw corrupt(`the tail ${cachePath}`, error.message, error);
    throw error;
  }
  return { chunks, geometry, tail };
}

/**
 * The pieces of the state's first part to load: all of it, or with `tokens` only what it
 * shares with them (at least one token, so the engine has a state to cut). Reads only the
 * chunks it keeps, plus the one after them when the shared part ends inside it.
 */
export async function piecesToLoad(ctx: StoreContext, source: ChunkedSource, tokens: ArrayLike<number> | undefined): Promise<{ pieces: Buffer[]; tokens: number }> {
  const { chunks, geometry, tail } = source;
  const context: StateContext = { digest: chunks.context, chunkTokens: chunks.chunkTokens };
  const size = chunks.chunkTokens;
  let keep = chunks.ids.length;
  let last: Buffer | null = tail;
  let lastTokens = chunks.tokens - keep * size;
  if (tokens !== undefined) {
    const promptIds = tokens.length >= size ? chunkChain(context, tokens) : [];
    keep = 0;
    while (keep < chunks.ids.length && keep < promptIds.length && promptIds[keep] === chunks.ids[keep]) keep++;
    const next = keep < chunks.ids.length ? await readChunk(ctx, chunks, keep, geometry) : tail;
    const available = keep < chunks.ids.length ? size : chunks.tokens - keep * size;
    let shared = sharedTokens(readChunkTokens(next), tokens, keep * size);
    if (keep === 0 && shared === 0 && available > 0) shared = 1;
    lastTokens = shared;
    last = shared === 0 ? null : shared === available ? next : truncateChunk(next, geometry, shared);
  }
  const full = await Promise.all(chunks.ids.slice(0, keep).map((_, i) => readChunk(ctx, chunks, i, geometry)));
  return { pieces: last ? [...full, last] : full, tokens: keep * size + lastTokens };
}

function readChunk(ctx: StoreContext, chunks: ChunkedState, index: number, geometry: KvGeometry): Promise<Buffer> {
  return ctx.chunkFiles.readVerified(
    { digest: chunks.context, chunkTokens: chunks.chunkTokens },
    chunks.ids[index]!,
    index === 0 ? null : chunks.ids[index - 1]!,
    geometry,
  );
}

/**
 * Join the state (all of it, or what it shares with `tokens`) into an in-memory file and run
 * `use` on its path; the file is closed when `use` settles. CHUNK_MISSING / CHUNK_CORRUPT when
 * a piece is missing or not what the manifest says; IO_ERROR where in-memory files cannot be made.
 */
export async function withJoinedState<T>(
  ctx: StoreContext,
  source: ChunkedSource,
  tokens: ArrayLike<number> | undefined,
  use: (loadPath: string, tokens: number) => Promise<T>,
): Promise<T> {
  const { pieces, tokens: count } = await piecesToLoad(ctx, source, tokens);
  let parts: Uint8Array[];
  try {
    ({ parts } = joinSeqStateParts({ geometry: source.geometry, pieces, placement: source.chunks.placement }));
  } catch (error) {
    if (isStateFormatError(error)) throw corrupt("a chunked state", error.message, error);
    throw error;
  }
  const memory = ctx.fsBackend.createMemoryFile("kvkeep-load");
  if (memory === null) {
    throw new KvKeepError("IO_ERROR", "a chunked cache can only be loaded where kvkeep can make in-memory files (Linux with the native addon); this process cannot.");
  }
  try {
    await memory.write(parts);
    return await use(memory.path, count);
  } finally {
    memory.close();
  }
}
