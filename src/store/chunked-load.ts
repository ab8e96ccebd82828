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
  type KvGeometry,
  readChunkTokens,
  truncateChunk,
  verifyChunk,
} from "../chunks/state-format.js";
import { KvKeepError } from "../errors.js";
import type { ChunkedState } from "../manifest/format.js";
import type { MemoryFile } from "../native/index.js";
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
 * What of the state to load: all of it, or with `tokens` only what it shares with them (at
 * least one token, so the engine has a state to cut) — its first `keep` full chunks (read by
 * the gather) and the piece after them (the tail, or the next chunk cut short), or none.
 * Reads only the chunk after the kept ones, when the shared part ends inside it.
 */
export async function piecesToLoad(ctx: StoreContext, source: ChunkedSource, tokens: ArrayLike<number> | undefined): Promise<{ keep: number; last: Buffer | null; tokens: number }> {
  const { chunks, geometry, tail } = source;
  const context: StateContext = { digest: chunks.context, chunkTokens: chunks.chunkTokens };
  const size = chunks.chunkTokens;
  if (tokens === undefined) return { keep: chunks.ids.length, last: tail, tokens: chunks.tokens };
  const promptIds = tokens.length >= size ? chunkChain(context, tokens) : [];
  let keep = 0;
  while (keep < chunks.ids.length && keep < promptIds.length && promptIds[keep] === chunks.ids[keep]) keep++;
  const next = keep < chunks.ids.length ? await readChunk(ctx, chunks, keep, geometry) : tail;
  const available = keep < chunks.ids.length ? size : chunks.tokens - keep * size;
  let shared = sharedTokens(readChunkTokens(next), tokens, keep * size);
  if (keep === 0 && shared === 0 && available > 0) shared = 1;
  const last = shared === 0 ? null : shared === available ? next : truncateChunk(next, geometry, shared);
  return { keep, last, tokens: keep * size + shared };
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
 * `use` on its path; the file is closed when `use` settles. The chunk files are read by one
 * native gather (ChunkFiles.gather), each checked before `use` runs. CHUNK_MISSING /
 * CHUNK_CORRUPT when a piece is missing or not what the manifest says; IO_ERROR where
 * in-memory files cannot be made.
 */
export async function withJoinedState<T>(
  ctx: StoreContext,
  source: ChunkedSource,
  tokens: ArrayLike<number> | undefined,
  use: (loadPath: string, tokens: number) => Promise<T>,
): Promise<T> {
  const { keep, last, tokens: count } = await piecesToLoad(ctx, source, tokens);
  const memory = takeLoadMemory(ctx);
  try {
    try {
      await ctx.chunkFiles.gather(memory, {
        context: { digest: source.chunks.context, chunkTokens: source.chunks.chunkTokens },
        ids: source.chunks.ids.slice(0, keep),
        geometry: source.geometry,
        last,
        placement: source.chunks.placement,
        checksums: ctx.verify === "checksum",
      });
    } catch (error) {
      if (isStateFormatError(error)) throw corrupt("a chunked state", error.message, error);
      throw error;
    }
    return await use(memory.path, count);
  } finally {
    returnLoadMemory(ctx, memory);
  }
}

/**
 * One in-memory file per store kept for loads, reused while loads come: its pages stay
 * allocated between loads, so a join copies into memory that is already there instead of
 * having the kernel allocate and zero a state's worth of pages each time (a third of a join's
 * cost at 8 000 tokens here). It holds the last state loaded (what the page cache holds of a
 * whole-file cache just loaded) and is closed after 30 s without loads.
 */
interface LoadMemorySlot {
  memory: MemoryFile | null;
  timer: ReturnType<typeof setTimeout> | null;
}
const loadMemories = new WeakMap<StoreContext, LoadMemorySlot>();
const LOAD_MEMORY_IDLE_MS = 30_000;

function takeLoadMemory(ctx: StoreContext): MemoryFile {
  const slot = loadMemories.get(ctx);
  if (slot?.memory) {
    const memory = slot.memory;
    slot.memory = null; // in use: a concurrent load makes its own
    if (slot.timer) clearTimeout(slot.timer);
    slot.timer = null;
    return memory;
  }
  const memory = ctx.fsBackend.createMemoryFile("kvkeep-load");
  if (memory === null) {
    throw new KvKeepError("IO_ERROR", "a chunked cache can only be loaded where kvkeep can make in-memory files (Linux with the native addon); this process cannot.");
  }
  return memory;
}

function returnLoadMemory(ctx: StoreContext, memory: MemoryFile): void {
  let slot = loadMemories.get(ctx);
  if (!slot) loadMemories.set(ctx, (slot = { memory: null, timer: null }));
  if (slot.memory) {
    memory.close(); // another load's file is kept already
    return;
  }
  slot.memory = memory;
  const kept = slot;
  kept.timer = setTimeout(() => {
    kept.memory?.close();
    kept.memory = null;
    kept.timer = null;
  }, LOAD_MEMORY_IDLE_MS);
  kept.timer.unref?.();
}
