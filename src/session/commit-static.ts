/**
 * Committing a turn's new state at its own cache path (a custom key, or an auto turn whose
 * reply did not move it): find what the engine saved, install it by the commit protocol.
 */
import type { CommitResult } from "../types.js";
import { withNewState } from "./new-state.js";
import { assertNotDeleted, type CommittedOutcome, identityOf, install, type SessionEnv, type TurnState } from "./turn.js";

export async function commitStatic(env: SessionEnv, st: TurnState, result: CommitResult, chain: readonly string[] | null): Promise<CommittedOutcome> {
  const { ctx, fingerprint } = env;
  const entry = await withNewState(env, st, st.cachePath, (source) =>
    install(env, {
      source: source.path,
      target: st.cachePath,
      header: st.header,
      previous: source.inPlace ? null : st.committedEntry,
      messageCount: result.messageCount,
      tokenCount: result.tokenCount ?? null,
      chain,
      chunks: source.chunks,
      noReplace: false,
    }),
  );
  await assertNotDeleted(env, st, st.cachePath, st.cachePath);
  ctx.layers.recordTrusted(st.cachePath, st.init, entry, fingerprint);
  ctx.retention.noteCommitted(st.cachePath, entry, fingerprint);
  return { committed: true, cachePath: st.cachePath, messageCount: result.messageCount, keptExisting: false, file: identityOf(entry) };
}
