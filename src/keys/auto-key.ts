/**
 * Auto-mode keys. The key of a history is a chained XXH64 over its normalised messages:
 * key(h[0..i+1]) = XXH64(content_i, seed = XXH64(header_i, seed = key(h[0..i]))), where the
 * header is the role and attachment paths. One pass over a history therefore yields the key
 * of every prefix — the lookup key, the commit target and the prefix index's chain.
 *
 * Speed (auto mode and the prefix index compute it every turn): the content is hashed as
 * its UTF-8 bytes directly (no JSON, no copy), normalisation is skipped for text it cannot
 * change, and each message remembers its link of the chain (a WeakMap on the message object,
 * checked against its role, content, attachments and the previous key), so the next turn of
 * a conversation whose message objects are kept hashes only its new messages.
 */
import { KvKeepError } from "../errors.js";
import type { CacheMessage } from "../types.js";
import { hex64, xxh64 } from "./hash.js";

/** Version of the key scheme: keys from another version never match (a cold start, not a wrong hit). */
const CHAIN_SEED = xxh64("kvkeep-auto-v2");

/** Text `normalizeAssistantContent` may change beyond trimming: carriage returns and non-ASCII (NFC). */
const NEEDS_NORMALIZING = /[\r\u0080-\uffff]/;

/**
 * Assistant replies are normalised on lookup and on save alike, so a reply the app stored
 * with different line endings or surrounding whitespace still finds its cache. The engine
 * adapter reuses by tokens anyway; the key only has to find the file.
 */
export function normalizeAssistantContent(content: string): string {
  // One scan decides: plain ASCII without carriage returns only needs trimming.
  if (!NEEDS_NORMALIZING.test(content)) return content.trim();
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

/** Digests of attachment-free headers, by role (a handful of roles in practice; bounded anyway). */
const roleDigests = new Map<string, bigint>();
const HEADER_SEED = xxh64("kvkeep-auto-v2/header");

/**
 * The digest of a message's header (role and attachment paths; JSON, so unambiguous whatever
 * the role holds). It is mixed into the seed of the content's hash, so a key depends on the
 * previous key, the header and the content, and no byte of one can pass for another.
 */
function headerDigest(role: string, attachmentPaths: string | null): bigint {
  if (attachmentPaths !== null) return xxh64(`[${JSON.stringify(role)},${attachmentPaths}]`, HEADER_SEED);
  let digest = roleDigests.get(role);
  if (digest === undefined) {
    digest = xxh64(JSON.stringify([role]), HEADER_SEED);
    if (roleDigests.size < 256) roleDigests.set(role, digest);
  }
  return digest;
}

function attachmentPathsOf(message: CacheMessage): string | null {
  return message.attachments?.length ? JSON.stringify(message.attachments.map((a) => a.path)) : null;
}

/**
 * The keys of every prefix of one history: `key(i)` is the key of `history.slice(0, i)`,
 * `key(0)` the chain's root. Keys are 16 lowercase hex chars, made on first read.
 */
export class KeyChain {
  readonly #values: BigUint64Array;
  readonly #hex: Array<string | undefined>;

  /** @internal */
  constructor(values: BigUint64Array) {
    this.#values = values;
    this.#hex = new Array<string | undefined>(values.length);
  }

  /** Prefixes in the chain: the history's length + 1. */
  get length(): number {
    return this.#values.length;
  }

  key(i: number): string {
    if (!Number.isInteger(i) || i < 0 || i >= this.#values.length) throw new RangeError(`no key ${i} in a chain of ${this.#values.length}`);
    return (this.#hex[i] ??= hex64(this.#values[i]!));
  }

  /** The key of the whole history. */
  last(): string {
    return this.key(this.#values.length - 1);
  }

  /** Every key, root first. */
  keys(): string[] {
    return Array.from({ length: this.#values.length }, (_, i) => this.key(i));
  }

  /** @internal the raw value of key i */
  value(i: number): bigint {
    return this.#values[i]!;
  }
}

/**
 * What one recent chain was computed from, so a later history that starts with the very same
 * message objects (the next turn of a conversation) reuses its keys. Contents, roles and
 * attachment paths are kept too: a message object edited in place never reuses a stale key.
 */
interface RecentChain {
  messages: CacheMessage[];
  roles: string[];
  contents: string[];
  attachmentPaths: Array<string | null>;
  values: BigUint64Array;
}

/** The last few chains (a handful of conversations in flight at once). */
const RECENT_CHAINS = 16;
const recent: RecentChain[] = [];

function sameMessage(r: RecentChain, i: number, m: CacheMessage): boolean {
  if (r.messages[i] !== m || r.contents[i] !== m.content || r.roles[i] !== m.role) return false;
  return m.attachments?.length ? r.attachmentPaths[i] === attachmentPathsOf(m) : r.attachmentPaths[i] === null;
}

/** The chain of every prefix of `history`, reusing the keys of a recent chain over the same message objects. */
export function messageKeyChain(history: readonly CacheMessage[]): KeyChain {
  const n = history.length;
  // The recent chain sharing the longest run of identical message objects with `history`.
  let best: RecentChain | null = null;
  let reused = 0;
  for (const r of recent) {
    if (n === 0 || r.messages[0] !== history[0]) continue;
    let i = 0;
    const limit = Math.min(n, r.messages.length);
    while (i < limit && sameMessage(r, i, history[i]!)) i++;
    if (i > reused) {
      reused = i;
      best = r;
    }
  }
  const values = new BigUint64Array(n + 1);
  const entry: RecentChain = {
    messages: history.slice(),
    roles: new Array<string>(n),
    contents: new Array<string>(n),
    attachmentPaths: new Array<string | null>(n),
    values,
  };
  values[0] = CHAIN_SEED;
  if (best) {
    values.set(best.values.subarray(1, reused + 1), 1);
    for (let i = 0; i < reused; i++) {
      entry.roles[i] = best.roles[i]!;
      entry.contents[i] = best.contents[i]!;
      entry.attachmentPaths[i] = best.attachmentPaths[i]!;
    }
  }
  let key = values[reused]!;
  for (let i = reused; i < n; i++) {
    const message = history[i]!;
    const attachmentPaths = attachmentPathsOf(message);
    const content = message.role === "assistant" ? normalizeAssistantContent(message.content) : message.content;
    key = xxh64(content, key ^ headerDigest(message.role, attachmentPaths));
    values[i + 1] = key;
    entry.roles[i] = message.role;
    entry.contents[i] = message.content;
    entry.attachmentPaths[i] = attachmentPaths;
  }
  if (n > 0) {
    // Most recent first; the one extended (if any) is replaced by its extension.
    const at = best ? recent.indexOf(best) : -1;
    if (at >= 0 && reused === best!.messages.length) recent.splice(at, 1);
    recent.unshift(entry);
    if (recent.length > RECENT_CHAINS) recent.pop();
  }
  return new KeyChain(values);
}

/** Auto keys of every prefix of `history`: result[i] is the key of `history.slice(0, i)` (length n + 1). */
export function autoKeyChain(history: readonly CacheMessage[]): string[] {
  return messageKeyChain(history).keys().map(autoKeyOf);
}

/** The auto cache key of a chain element. */
export function autoKeyOf(chainKey: string): string {
  return `auto-${chainKey}`;
}

/** The chain element of an auto cache key (the inverse of `autoKeyOf`). */
export function chainKeyOfAuto(cacheKey: string): string {
  return cacheKey.slice("auto-".length);
}

/** The auto key of exactly this history. */
export function autoCacheKey(history: readonly CacheMessage[]): string {
  return autoKeyOf(messageKeyChain(history).last());
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
  const chain = messageKeyChain(history.slice(0, firstUser < 0 ? history.length : firstUser + 1));
  return `conv-${chain.last()}`;
}
