/**
 * Committing a turn's new state at its own cache path (a custom key, or an auto turn whose
 * reply did not move it): find what the engine saved, install it by the commit protocol.
 */
import { KvKeepError } from "../errors.js";
import { inspectFile, unlinkIfExists } from "../durable/files.js";
import { sameIdentity } from "../durable/identity.js";
import type { CommitResult } from "../types.js";
import { assertNotDeleted, type CommittedOutcome, identityOf, install, type SessionEnv, type TurnState } from "./turn.js";

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


export async function commitStatic(env: SessionEnv, st: TurnState, result: CommitResult, chain: readonly string[] | null): Promise<CommittedOutcome> {
  const { ctx, fingerprint } = env;
  const source = await findNewState(env, st);
  const entry = await install(env, {
    source: source.path,
    target: st.cachePath,
    header: st.header,
    previous: source.inPlace ? null : st.committedEntry,
    messageCount: result.messageCount,
    tokenCount: result.tokenCount ?? null,
    chain,
    noReplace: false,
  });
  await assertNotDeleted(env, st, st.cachePath, st.cachePath);
  ctx.layers.recordTrusted(st.cachePath, st.init, entry, fingerprint);
  ctx.retention.noteCommitted(st.cachePath, entry, fingerprint);
  return { committed: true, cachePath: st.cachePath, messageCount: result.messageCount, keptExisting: false, file: identityOf(entry) };
}
