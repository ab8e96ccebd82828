/**
 * Auto-mode keys. The key of a history is a chained XXH64 over its normalised messages:
 * key(h[0..i+1]) = XXH64(encode(h[i]), seed = key(h[0..i])). One pass over a history
 * therefore yields the key of every prefix, which is what lookup and commit both need.
 */
import { KvKeepError } from "../errors.js";
import type { CacheMessage } from "../types.js";
import { xxh64 } from "./hash.js";

const CHAIN_SEED = xxh64("kvkeep-auto-v1");

/**
 * Assistant replies are normalised on lookup and on save alike, so a reply the app stored
 * with different line endings or surrounding whitespace still finds its cache. The engine
 * adapter reuses by tokens anyway; the key only has to find the file.
 */
export function normalizeAssistantContent(content: string): string {
  return content.replace(/\r\n?/g, "\n").trim().normalize("NFC");
}

export function normalizeMessage(message: CacheMessage): CacheMessage {
  const attachments = message.attachments?.length ? { attachments: message.attachments.map((a) => ({ path: a.path })) } : {};
  return {
    role: message.role,
    content: message.role === "assistant" ? normalizeAssistantContent(message.content) : message.content,
    ...attachments,
  };
}

function assertMessage(message: unknown, index: number, argument: string): asserts message is CacheMessage {
  const m = message as Partial<CacheMessage> | null;
  const ok =
    m !== null &&
    typeof m === "object" &&
    typeof m.role === "string" &&
    typeof m.content === "string" &&
    (m.attachments === undefined ||
      (Array.isArray(m.attachments) && m.attachments.every((a) => a && typeof a.path === "string")));
  if (!ok) {
    throw new KvKeepError(
      "INVALID_ARGUMENT",
      `${argument}[${index}] must be { role: string, content: string, attachments?: { path: string }[] }.`,
      { argument },
    );
  }
}

export function assertHistory(history: unknown, argument = "history"): asserts history is readonly CacheMessage[] {
  if (!Array.isArray(history)) {
    throw new KvKeepError("INVALID_ARGUMENT", `${argument} must be an array of messages.`, { argument });
  }
  history.forEach((m, i) => assertMessage(m, i, argument));
}

function encodeMessage(message: CacheMessage): string {
  const m = normalizeMessage(message);
  // JSON of a fixed-order tuple: unambiguous whatever the content holds.
  return JSON.stringify([m.role, m.content, (m.attachments ?? []).map((a) => a.path)]);
}

function keyOf(hash: bigint): string {
  return `auto-${hash.toString(16).padStart(16, "0")}`;
}

/** Keys of every prefix of `history`: result[i] is the key of `history.slice(0, i)` (length n + 1). */
export function autoKeyChain(history: readonly CacheMessage[]): string[] {
  const keys = [keyOf(CHAIN_SEED)];
  let hash = CHAIN_SEED;
  for (const message of history) {
    hash = xxh64(encodeMessage(message), hash);
    keys.push(keyOf(hash));
  }
  return keys;
}

/** The auto key of exactly this history. */
export function autoCacheKey(history: readonly CacheMessage[]): string {
  return autoKeyChain(history).at(-1)!;
}

/** The history whose cache a new auto turn looks up: all but the last (new) message. */
export function autoLookupHistory(history: readonly CacheMessage[]): readonly CacheMessage[] {
  return history.length <= 1 ? [] : history.slice(0, -1);
}

/**
 * The conversation an auto-mode history belongs to, for turn events and warming: stable
 * across its turns (its cache key changes every turn). Derived from the history up to and
 * including the first user message, so two conversations that open with the same system
 * prompt and first message share it — pass `conversationId` to tell them apart.
 */
export function autoConversationId(history: readonly CacheMessage[]): string {
  const firstUser = history.findIndex((m) => m.role === "user");
  const chain = autoKeyChain(history.slice(0, firstUser < 0 ? history.length : firstUser + 1));
  return `conv-${chain.at(-1)!.slice("auto-".length)}`;
}
