/**
 * Storing a new state as token chunks (ARCHITECTURE.md, "Commit protocol"): the chunks the root lacks are written,
 * the ones it has are touched, and only the tail goes beside the cache for the two-slot
 * install — so a turn writes its new tokens' KV, its tail and its manifest, never the whole
 * state. The chunk identities chain over the tokens under a state context that names the
 * model, the KV geometry read from the state, the engine's settings and the session's scope
 * (two scopes never share a chunk).
 *
 * Order, for crash safety: every chunk the manifest will name is durable on the disk (written:
 * temp, fsync, rename, fsync dir; or already there and touched) before the tail's install
 * writes a manifest naming it. The root's chunk gate is held SHARED from the first touch to
 * the install, so a GC never collects a chunk between our look and our manifest.
 */
import { type ChunkId, chunkChain, type StateContext, stateContext } from "../chunks/chunk-id.js";
import { StateFormatError } from "../chunks/errors.js";
import { requireCuttable } from "../chunks/seq-state-parser.js";
import { DEFAULT_CHUNK_TOKENS, encodeKvGeometry, type SeqStateLayout, splitSeqState } from "../chunks/state-format.js";
import { type ChunkedState, MAX_CHUNK_IDS } from "../manifest/format.js";
import type { SavedState } from "./saved-state.js";
import type { SessionEnv } from "./turn.js";

/** What a state will be stored as: its chunk identities and the manifest entry's `chunks`. */
export interface ChunkPlan {
  readonly context: StateContext;
  readonly ids: readonly ChunkId[];
  readonly entry: ChunkedState;
  /** The state's layout (its rows are read as the store needs them). */
  readonly layout: SeqStateLayout;
}

/** The state context of a session's chunks: everything the KV bytes depend on besides the tokens, and the scope. */
export function sessionStateContext(env: SessionEnv, geometry: Parameters<typeof stateContext>[0]["geometry"]): StateContext {
  const chunking = env.chunking!;
  return stateContext({
    modelFingerprint: env.fingerprint ?? "-",
    geometry,
    attentionRotation: chunking.attentionRotation,
    sequences: chunking.sequences,
    chunkTokens: chunking.chunkTokens ?? DEFAULT_CHUNK_TOKENS,
    // The model id too (a session without a fingerprint names its model only by it), and the
    // scope's id: chunks are shared within a scope, never across (its id is hashed, not shown).
    extra: [...(env.chunking!.extra ?? []), `model-id=${env.modelId}`, `scope=${env.scopeId ?? "-"}`],
  });
}

/**
 * Plan storing `state` as chunks. Throws a StateFormatError for a state kvkeep does not fully
 * understand (another version, cells out of order, a sliding-window or recurrent layout, an
 * empty state) or one too long for a manifest: that state is stored whole.
 */
export function planChunks(env: SessionEnv, layout: SeqStateLayout): ChunkPlan {
  requireCuttable(layout);
  if (layout.geometry === null) throw new StateFormatError("STATE_UNSUPPORTED", "an empty state (no KV) is kept whole.");
  const context = sessionStateContext(env, layout.geometry);
  const ids = chunkChain(context, layout.tokens);
  if (ids.length > MAX_CHUNK_IDS) {
    throw new StateFormatError("STATE_UNSUPPORTED", `${layout.tokenCount} tokens make ${ids.length} chunks, more than a manifest names (${MAX_CHUNK_IDS}); kept whole.`);
  }
  return {
    context,
    ids,
    entry: {
      context: context.digest,
      geometry: encodeKvGeometry(layout.geometry).toString("base64"),
      placement: { ...layout.placement },
      chunkTokens: context.chunkTokens,
      ids,
      tokens: layout.tokenCount,
    },
    layout,
  };
}

/** Chunk files written at once (each: temp, fsync, rename, fsync of its directory). */
const PARALLEL_WRITES = 4;

/** What storing the chunks did: the tail to install, and what was written. */
export interface StoredChunks {
  /** The tail chunk (kvkc): the cache file's new content. */
  readonly tail: Buffer;
  /** Chunks written by this commit (the others were on the disk and touched). */
  readonly written: number;
  /** Bytes of the chunks written. */
  readonly writtenBytes: number;
}

/**
 * Make every chunk `plan` names durable on the disk: touch the ones there (they are about to
 * be referenced again), encode and write only the missing ones. Chunks `referenced` names (in
 * the same context) are skipped: a manifest names them throughout this commit (the target's
 * own committed one), so GC never takes them and they are known to be there. Call it under
 * the commit gate.
 */
export async function storeChunks(env: SessionEnv, plan: ChunkPlan, saved: SavedState, referenced: ChunkedState | null = null): Promise<StoredChunks> {
  const files = env.ctx.chunkFiles;
  const digest = plan.context.digest;
  const known = referenced?.context === digest ? new Set(referenced.ids) : null;
  const unknown = known ? plan.ids.filter((id) => !known.has(id)) : plan.ids;
  const touched = new Map<string, boolean>();
  (await files.touchAll(digest, unknown)).forEach((there, i) => touched.set(unknown[i]!, there));
  const present = plan.ids.map((id) => known?.has(id) || touched.get(id) === true);
  const missing = present.flatMap((there, i) => (there ? [] : [i]));
  // Encode from the first missing chunk on (usually only the turn's new ones), the tail always.
  const from = missing[0] ?? plan.ids.length;
  const chunkTokens = plan.context.chunkTokens;
  await saved.readRows(from * chunkTokens); // the rows of what is encoded: the missing chunks and the tail
  const split = splitSeqState(saved.bytes, { chunkTokens, skipChunks: from, layout: plan.layout });
  let writtenBytes = 0;
  // A few side by side (their fsyncs overlap); every one is durable before the install names it.
  for (let k = 0; k < missing.length; k += PARALLEL_WRITES) {
    const sizes = await Promise.all(missing.slice(k, k + PARALLEL_WRITES).map((i) => files.write(digest, plan.ids[i]!, split.chunks[i - from]!)));
    for (const bytes of sizes) writtenBytes += bytes;
  }
  return { tail: split.tail, written: missing.length, writtenBytes };
}
