/** QVAC's rule for when a cached turn may commit (its plugin's `shouldCommitCachedTurn`), pure. */

export interface CacheCommitContext {
  /** The caller aborted the completion. */
  aborted: boolean;
  /** The model produced at least one non-empty piece of text. */
  producedTokens: boolean;
  generatedTokens?: number | undefined;
  /** The generation budget in force (`generationParams.predict`, else the model's `predict`). */
  predict?: number | undefined;
  /** The addon stopped because the context was full. */
  stoppedAtContextBoundary: boolean;
}

/**
 * Commit only a turn that ended on its own: not aborted, not empty, not cut by the token
 * budget or the context's end. A reply cut short is not a message boundary the next turn's
 * history will repeat, so its state must not be recorded as `history + reply`.
 */
export function shouldCommitCachedTurn(context: CacheCommitContext): boolean {
  const { aborted, producedTokens, generatedTokens, predict, stoppedAtContextBoundary } = context;
  const stoppedByBudget = predict !== undefined && predict > 0 && generatedTokens !== undefined && generatedTokens >= predict;
  return !aborted && producedTokens && !stoppedByBudget && !stoppedAtContextBoundary;
}
