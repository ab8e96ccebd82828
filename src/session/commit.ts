/** A turn's commit: the outcome of installing its new state, and what follows it. */
import { errnoCode, fsWriteError, isKvKeepError, KvKeepError } from "../errors.js";
import { messageKeyChain } from "../keys/auto-key.js";
import type { CommitFailureReason, CommitOutcome, CommitResult } from "../types.js";
import { commitAuto } from "./auto-rename.js";
import { commitStatic } from "./commit-static.js";
import { rollbackTurn, settle } from "./rollback.js";
import { assertNotDeleted, type CommittedOutcome, deletedDuringTurnError, deletedSinceTurnBegan, type SessionEnv, stateChain, type TurnState } from "./turn.js";
import { validateCommitResult } from "./validate.js";

/** The outcome's reason for a commit failure (its error's code, in the outcome's words). */
export function failureReason(error: KvKeepError): CommitFailureReason {
  switch (error.code) {
    case "SAVE_MISSING":
      return "save-missing";
    case "SAVE_EMPTY":
      return "save-empty";
    case "DELETED_DURING_TURN":
      return "deleted-during-turn";
    case "NO_SPACE":
      return "no-space";
    case "UNSAFE_PATH":
      return "unsafe-path";
    default:
      return "io-error";
  }
}

/** Failures that are the turn's own (nothing saved, cache deleted) roll back per the policy. */
const TURN_FAILURES = new Set(["SAVE_MISSING", "SAVE_EMPTY", "DELETED_DURING_TURN"]);

/**
 * Commit an open turn: install its new state (static or auto-rename), then settle it. A
 * failure of the turn's own (nothing saved, cache deleted) rolls back per the policy; one of
 * kvkeep's I/O keeps the last committed state; a bug rolls back and rejects.
 */
export async function commitTurn(env: SessionEnv, st: TurnState, result: CommitResult): Promise<CommitOutcome> {
  const { ctx, fingerprint, policy, log } = env;
  const target = validateCommitResult(ctx, st, result);
  st.status = "committing";
  const work = (async (): Promise<CommitOutcome> => {
    let outcome: CommittedOutcome;
    try {
      await assertNotDeleted(env, st, null, st.cachePath);
      outcome =
        result.kind === "static"
          ? await commitStatic(env, st, result, result.history ? stateChain(messageKeyChain(result.history), result.messageCount) : null)
          : await commitAuto(env, st, result, target!);
    } catch (caught) {
      // A bug (no KvKeepError, no errno) is not a commit outcome: it rolls back and rejects.
      if (!isKvKeepError(caught) && errnoCode(caught) === undefined) {
        st.status = "open";
        await rollbackTurn(env, st, "keep-committed");
        throw caught;
      }
      let error = isKvKeepError(caught) ? caught : fsWriteError("committing the turn", caught);
      // A delete that removed the turn's files makes them look missing: say what happened.
      if (error.code !== "DELETED_DURING_TURN" && (await deletedSinceTurnBegan(env, st, st.cachePath))) {
        error = deletedDuringTurnError(error);
      }
      // Any failure in kvkeep's own I/O (disk full, EIO, …) says nothing against the last
      // committed state: keep it whatever the policy. A turn that saved nothing, or whose
      // cache was deleted, rolls back per the policy like any failed turn.
      st.status = "open";
      const cleared = await rollbackTurn(env, st, TURN_FAILURES.has(error.code) ? policy : "keep-committed");
      log("warn", "commit failed; the turn was rolled back", { cachePath: st.cachePath, code: error.code, error });
      return { committed: false, reason: failureReason(error), error, keptCommitted: !cleared };
    }
    st.status = "committed";
    ctx.retention.afterCommit(); // a background sweep when one is due; never awaited
    // Remote hook (write-behind): queue the upload of what this commit installed; never awaited.
    if (!outcome.keptExisting) ctx.remote?.afterCommit(outcome.cachePath, fingerprint);
    // An auto commit moved the cache away: its lock file goes too, so the directory can be pruned.
    await settle(env, st, result.kind === "autoRename", {
      outcome: "committed",
      cachePath: outcome.cachePath,
      messageCount: outcome.messageCount,
      tokenCount: result.tokenCount ?? null,
    });
    return outcome;
  })();
  st.settling = work;
  return work;
}
