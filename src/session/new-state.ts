/**
 * The new state a commit (or a prime) installs, wherever the engine put it: a file at
 * `savePath` (or rewritten in place at `cachePath`) in a whole-file session, an in-memory file
 * in a chunked one. For an in-memory state the commit writes a temp file beside the target
 * that the two-slot install renames into place: the whole state, or — when kvkeep can split it
 * — only its tail chunk, after the chunks the root lacks are stored (chunk-commit.ts).
 */
import { promises as fs } from "node:fs";
import { isStateFormatError, type StateFormatError } from "../chunks/errors.js";
import { crashPoint } from "../durable/crash-points.js";
import { KvKeepError } from "../errors.js";
import { inspectFile, unlinkIfExists } from "../durable/files.js";
import { sameIdentity } from "../durable/identity.js";
import { ownTempPath } from "../durable/temp-owner.js";
import type { ChunkedState } from "../manifest/format.js";
import type { MemoryFile } from "../native/index.js";
import { type ChunkPlan, planChunks, storeChunks } from "./chunk-commit.js";
import { readSavedState, type SavedState } from "./saved-state.js";
import type { SessionEnv, TurnState } from "./turn.js";

/** The new state as the install takes it: a file (temp or in place), and its chunks when stored chunked. */
export interface NewState {
  path: string;
  inPlace: boolean;
  /** The manifest entry's `chunks` (the file at `path` is then the tail chunk), or null for a whole state. */
  chunks: ChunkedState | null;
}

/** The turn's in-memory file holds nothing: the engine saved nothing. */
export function saveMissingError(st: TurnState): KvKeepError {
  return new KvKeepError(
    "SAVE_MISSING",
    `no new state was saved for this turn; the engine must write it to turn.savePath (${st.handle.savePath}) before commitTurn. The turn was rolled back.`,
  );
}

/** Throws SAVE_MISSING when the turn's in-memory file is empty (cheap: one fstat). */
export function assertSavedInMemory(st: TurnState): void {
  if (st.memory && st.memory.size() === 0) throw saveMissingError(st);
}

/**
 * Run `use` (the install) on the turn's new state prepared for `target`. A temp file this made
 * is gone when it returns (renamed into place by the install, or removed).
 */
export async function withNewState<T>(env: SessionEnv, st: TurnState, target: string, use: (state: NewState) => Promise<T>): Promise<T> {
  if (!st.memory) return use({ ...(await findNewState(env, st)), chunks: null });
  const committed = st.committedEntry?.chunks ?? null;
  return withMemoryState(env, st.memory, target, use, () => saveMissingError(st), {
    // The turn's state most likely continues the committed one: same geometry, same placement.
    expected: committed,
    // Rewriting the turn's own cache, the chunks its committed manifest names stay named by a
    // manifest at that path until the install replaces it with one naming them again: GC sees
    // them referenced whenever it looks, so they need no touch (chunk-commit.ts, storeChunks).
    referenced: target === st.cachePath ? committed : null,
  });
}

/** What a commit may assume of the state in memory (each optional). */
export interface MemoryStateHints {
  /** The geometry and placement the state most likely has: then only what the commit needs is read. */
  expected?: ChunkedState | null | undefined;
  /** Chunks a manifest names throughout the commit (the target's own committed ones): storing skips them. */
  referenced?: ChunkedState | null | undefined;
}

/**
 * Run `use` on the state held by `memory`, written beside `target` for the install. `empty`
 * is the error for an in-memory file holding nothing.
 */
export async function withMemoryState<T>(
  env: SessionEnv,
  memory: MemoryFile,
  target: string,
  use: (state: NewState) => Promise<T>,
  empty: () => KvKeepError,
  hints: MemoryStateHints = {},
): Promise<T> {
  const size = memory.size();
  if (size === 0) throw empty();
  const saved = await readSavedState(env.ctx, memory, size, env.chunking ? (hints.expected ?? null) : null);
  try {
    return await commitSaved(env, saved, target, use, hints.referenced ?? null);
  } finally {
    // Nothing keeps a view of the buffer past the commit: chunks and tail are encoded into buffers of their own.
    saved.release();
  }
}

async function commitSaved<T>(env: SessionEnv, saved: SavedState, target: string, use: (state: NewState) => Promise<T>, referenced: ChunkedState | null): Promise<T> {
  let plan: ChunkPlan | null = null;
  if (env.chunking) {
    try {
      if (isStateFormatError(saved.layout)) throw saved.layout;
      plan = planChunks(env, saved.layout);
    } catch (error) {
      if (!isStateFormatError(error)) throw error;
      warnWholeOnce(env, error);
    }
  }
  const temp = ownTempPath(target);
  try {
    if (!plan) {
      await saved.readAll();
      await writeTemp(temp, saved.bytes);
      return await use({ path: temp, inPlace: false, chunks: null });
    }
    const chunked = plan;
    // Shared from the first touch to the manifest install: a GC never collects a chunk in between.
    return await env.ctx.chunkFiles.withCommitGate(async () => {
      const stored = await storeChunks(env, chunked, saved, referenced);
      await crashPoint("chunked:after-chunks-stored");
      await writeTemp(temp, stored.tail);
      await crashPoint("chunked:after-tail-temp");
      env.log("debug", "storing a chunked state", {
        target,
        tokens: chunked.entry.tokens,
        chunks: chunked.ids.length,
        written: stored.written,
        bytes: stored.writtenBytes + stored.tail.byteLength,
      });
      return use({ path: temp, inPlace: false, chunks: chunked.entry });
    });
  } finally {
    // Renamed into place by a successful install (then this finds nothing), else left over.
    await unlinkIfExists(temp).catch(() => {});
  }
}

const warnedWhole = new WeakMap<object, Set<string>>();

/** A state this session cannot split is stored whole; said once per store, model and reason. */
function warnWholeOnce(env: SessionEnv, error: StateFormatError): void {
  let seen = warnedWhole.get(env.ctx);
  if (!seen) warnedWhole.set(env.ctx, (seen = new Set()));
  const key = `${env.modelId}:${error.code}`;
  if (seen.has(key)) return;
  seen.add(key);
  env.log("warn", "a state could not be split into chunks; it is stored whole", { modelId: env.modelId, code: error.code, reason: error.message });
}

/** A new temp file holding `bytes` (the install fsyncs and hashes it). */
export async function writeTemp(temp: string, bytes: Uint8Array): Promise<void> {
  await fs.writeFile(temp, bytes, { flag: "wx", mode: 0o644 });
}

/** The new state the engine saved: at savePath, or rewritten in place at cachePath. */
export async function findNewState(env: SessionEnv, st: TurnState): Promise<{ path: string; inPlace: boolean }> {
  const { ctx } = env;
  const savedState = await inspectFile(st.handle.savePath, ctx.fsBackend);
  if (savedState.kind === "other") {
    throw new KvKeepError(
      "UNSAFE_PATH",
      `turn.savePath (${st.handle.savePath}) is a ${savedState.type}, not a regular file; kvkeep never commits through it. The turn was rolled back.`,
    );
  }
  if (savedState.kind === "file") {
    if (savedState.identity.size === 0) {
      await unlinkIfExists(st.handle.savePath);
      throw new KvKeepError("SAVE_EMPTY", `the engine saved an empty state at ${st.handle.savePath}; the turn was rolled back.`);
    }
    return { path: st.handle.savePath, inPlace: false };
  }
  const currentState = await inspectFile(st.cachePath, ctx.fsBackend);
  if (currentState.kind === "other") {
    throw new KvKeepError("UNSAFE_PATH", `the cache path ${st.cachePath} became a ${currentState.type} during the turn; nothing was committed.`);
  }
  const current = currentState.kind === "file" ? currentState.identity : null;
  if (current && !(st.beginIdentity && sameIdentity(current, st.beginIdentity))) {
    if (current.size === 0) throw new KvKeepError("SAVE_EMPTY", `the engine left an empty state at ${st.cachePath}.`);
    return { path: st.cachePath, inPlace: true };
  }
  throw new KvKeepError(
    "SAVE_MISSING",
    `no new state was saved for this turn; the engine must write it to turn.savePath (${st.handle.savePath}) before commitTurn. The turn was rolled back.`,
  );
}
