/**
 * Committing a turn's new state, the same way for every engine: a named cache is replaced in
 * place (and indexed by the history it covers, for prefix reuse); an auto cache is renamed
 * to the key of `history + reply`. A commit that fails is reported, never thrown: the reply
 * exists, and `commitTurn` has already rolled the turn back.
 */
import { type Logger, logLine } from "../../logger.js";
import type { CacheMessage, CommitOutcome, KvCacheSession, TurnHandle } from "../../types.js";
import { now } from "./clock.js";
import type { CompletionCommitFailure } from "./stats.js";

/** A commit that happened: where the state is now and the identity of the file installed. */
export type Committed = Extract<CommitOutcome, { committed: true }>;

export interface CommitReport {
  /** The commit, or null when nothing was committed. */
  outcome: Committed | null;
  failure: CompletionCommitFailure | null;
  /** Time in `commitTurn`. */
  commitMs: number;
}

export async function commitReply(
  session: KvCacheSession,
  turn: TurnHandle,
  reply: { history: readonly CacheMessage[]; reply: CacheMessage; configHash: string; tokenCount: number | undefined },
  logger: Logger,
): Promise<CommitReport> {
  const messageCount = reply.history.length + 1;
  const covered = [...reply.history, reply.reply];
  const { tokenCount } = reply;
  const started = now();
  try {
    const outcome = await session.commitTurn(
      turn,
      turn.kind === "custom"
        ? { kind: "static", messageCount, tokenCount, history: covered }
        : { kind: "autoRename", targetCachePath: session.autoCachePath(reply.configHash, covered), messageCount, tokenCount },
    );
    const commitMs = now() - started;
    if (outcome.committed) return { outcome, failure: null, commitMs };
    return { outcome: null, failure: outcome.reason === "not-open" ? "error" : outcome.reason, commitMs };
  } catch (error) {
    logger.warn(logLine("could not commit the turn's cache; the reply stands, the next turn re-primes", { error }));
    return { outcome: null, failure: "error", commitMs: now() - started };
  }
}
