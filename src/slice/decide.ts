/** Which messages a handler sends the engine on top of a cache (pure). */
import { KvKeepError } from "../errors.js";

export interface HistorySlice<M> {
  /** The messages to evaluate on top of the cache. */
  messages: M[];
  /** True when a cache exists but its saved count could not be used: call `dropStaleSavedCount`. */
  clearStaleCount: boolean;
}

/**
 * With a cache and `0 < savedCount < history.length`, the tail after the saved messages;
 * otherwise the whole history without system messages (the primed cache holds the system
 * prompt), flagging `clearStaleCount` exactly when a cache exists and a non-zero count
 * could not be used — a count at or past the end would send nothing, the bug this guards.
 */
export function decideCachedHistorySlice<M extends { role: string }>(
  savedCount: number,
  cacheExists: boolean,
  history: readonly M[],
): HistorySlice<M> {
  if (typeof savedCount !== "number" || Number.isNaN(savedCount)) {
    throw new KvKeepError("INVALID_ARGUMENT", "savedCount must be a number (the turn's savedCount).", { argument: "savedCount" });
  }
  if (typeof cacheExists !== "boolean") {
    throw new KvKeepError("INVALID_ARGUMENT", "cacheExists must be a boolean.", { argument: "cacheExists" });
  }
  if (!Array.isArray(history)) {
    throw new KvKeepError("INVALID_ARGUMENT", "history must be an array of { role, content } messages.", { argument: "history" });
  }
  const bad = history.findIndex((m: unknown) => m === null || typeof m !== "object" || typeof (m as { role?: unknown }).role !== "string");
  if (bad >= 0) {
    throw new KvKeepError("INVALID_ARGUMENT", `history[${bad}] must be a message with a string role.`, { argument: "history" });
  }
  if (cacheExists && savedCount > 0 && savedCount < history.length) {
    return { messages: history.slice(savedCount), clearStaleCount: false };
  }
  return {
    messages: history.filter((m) => m.role !== "system"),
    clearStaleCount: cacheExists && savedCount !== 0 && history.length > 0,
  };
}
