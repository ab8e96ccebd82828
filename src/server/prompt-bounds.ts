/**
 * Refusing a prompt that cannot fit the context before rendering it (pure). Rendering and
 * tokenizing run on the event loop: one request of 120 000 one-character messages (3.7 MiB,
 * under the body limit) blocked every other request for seconds before its 400. Two lower
 * bounds on the prompt's tokens cost one pass over the message lengths:
 *
 * - messages: every message of a chat takes at least one token (its role header, if
 *   nothing else), so more messages than the context has tokens cannot fit;
 * - bytes: no token stands for more bytes of text than the longest token string of the
 *   vocabulary (`maxTokenBytes`), so the contents' UTF-8 bytes divided by it is at most the
 *   tokens they take.
 *
 * Both only ever refuse what the engine would refuse after rendering (a prompt must leave a
 * token for the reply); what passes is rendered and checked exactly as before.
 */
import type { CacheMessage } from "../types.js";

export interface PromptBounds {
  /** Tokens of each sequence's context. */
  contextSize: number;
  /** The longest token of the vocabulary in UTF-8 bytes; null when unknown (no bytes bound). */
  maxTokenBytes: number | null;
}

/** The longest token string of a vocabulary, in UTF-8 bytes; null for an empty or missing one. */
export function maxTokenBytesOf(tokens: unknown): number | null {
  if (!Array.isArray(tokens) || tokens.length === 0) return null;
  let max = 0;
  for (const token of tokens) {
    if (typeof token !== "string") return null;
    // Length first: UTF-8 takes at most 3 bytes per UTF-16 unit, so most tokens need no count.
    if (token.length * 3 > max) max = Math.max(max, Buffer.byteLength(token, "utf8"));
  }
  return max > 0 ? max : null;
}

/**
 * Why `history` cannot fit a context of `bounds.contextSize` tokens, or null when it may
 * (then only rendering can tell). O(messages), no allocation of the text.
 */
export function promptCannotFit(history: readonly CacheMessage[], bounds: PromptBounds): string | null {
  const { contextSize, maxTokenBytes } = bounds;
  if (history.length >= contextSize) {
    return `the prompt has ${history.length} messages, and each takes at least one token: it cannot fit the context (${contextSize} tokens).`;
  }
  if (maxTokenBytes === null) return null;
  let bytes = 0;
  const limit = contextSize * maxTokenBytes;
  for (const message of history) {
    bytes += Buffer.byteLength(message.content, "utf8");
    if (bytes >= limit) {
      return `the prompt's text is at least ${bytes} bytes, at least ${Math.ceil(bytes / maxTokenBytes)} tokens (no token of this model is longer than ${maxTokenBytes} bytes): it cannot fit the context (${contextSize} tokens).`;
    }
  }
  return null;
}
