/**
 * What every adapter's `completion()` takes, checked once: the conversation, the cache mode,
 * the scope, the abort signal and the token callback. Adapters check their own further
 * parameters (sampling, stop texts, generation parameters) in their engine half.
 */
import { KvKeepError } from "../../errors.js";
import { generateConfigHash } from "../../keys/config-hash.js";
import { assertScope } from "../../keys/scope.js";
import type { CacheMessage } from "../../types.js";
import { isAbortSignal } from "./abort.js";

/** The parameters the turn skeleton reads; each adapter's params extend these. */
export interface TurnParams {
  /** The conversation so far, ending with the new user message. */
  history: readonly CacheMessage[];
  /** A session name (named cache), `true` (auto mode: keyed by the history) or `false` (no cache). */
  kvCache: string | boolean;
  /** Whose conversation this is (`SessionOptions.scope`). Default: the adapter's `scope`. */
  scope?: string | undefined;
  /** Aborts the call: the turn rolls back and the call rejects with ABORTED. */
  signal?: AbortSignal | undefined;
  /** Names the conversation in the store's turn events (warming). Default: the session's. */
  conversationId?: string | undefined;
  /** Each piece of generated text as it is produced. */
  onToken?: ((text: string) => void) | undefined;
}

export function invalidArgument(message: string, argument: string): KvKeepError {
  return new KvKeepError("INVALID_ARGUMENT", message, { argument });
}

/** Refuse malformed common parameters with INVALID_ARGUMENT naming the argument. */
export function validateTurnParams(params: unknown): asserts params is TurnParams {
  if (!params || typeof params !== "object") throw invalidArgument("completion needs a params object.", "params");
  const { history, kvCache, signal, onToken, scope } = params as Partial<TurnParams>;
  if (!Array.isArray(history) || history.length === 0) {
    throw invalidArgument("history must be a non-empty array of { role, content } messages.", "history");
  }
  history.forEach((m: Partial<CacheMessage> | null, i) => {
    if (!m || typeof m !== "object" || typeof m.role !== "string" || typeof m.content !== "string") {
      throw invalidArgument(`history[${i}] must be a { role: string, content: string } message.`, "history");
    }
  });
  if (typeof kvCache !== "boolean" && typeof kvCache !== "string") throw invalidArgument("kvCache must be a session name, true or false.", "kvCache");
  if (signal !== undefined && !isAbortSignal(signal)) throw invalidArgument("signal must be an AbortSignal.", "signal");
  if (onToken !== undefined && typeof onToken !== "function") throw invalidArgument("onToken must be a function.", "onToken");
  if (scope !== undefined) assertScope(scope);
}

/** The system messages' contents joined by newlines, or null when there are none. */
export function systemPromptOf(history: readonly CacheMessage[]): string | null {
  return history.filter((m) => m.role === "system").map((m) => m.content).join("\n") || null;
}

/**
 * The turn's config hash: its system prompt and the names the engine says shape the primed
 * state (node-llama-cpp: the tools'; QVAC: none, tools travel with every turn).
 */
export function turnConfigHash(history: readonly CacheMessage[], configNames?: readonly string[]): string {
  return generateConfigHash(systemPromptOf(history), configNames);
}
