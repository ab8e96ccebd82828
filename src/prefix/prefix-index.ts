/**
 * The prefix index: which committed cache shares the longest message prefix with a history.
 * Pure bookkeeping, no I/O; owned by the store's `Retention` (it changes only when the
 * retention index changes: the same commits, removals, log records and walks of the root).
 *
 * Every committed cache records the message-key chain of the conversation its state holds
 * (`ManifestEntry.chain`: key i = the chained XXH64 of the first i messages, as auto mode
 * computes it). A chain key names a whole prefix, so "does any cache hold the first d
 * messages of this history?" is one map lookup of the history's own key d, within a scope —
 * isolation scope (whose conversations: src/keys/scope.ts), model id, model fingerprint and
 * config hash, the chain's root: caches of another user, model, state layout or system
 * prompt never meet. And if a cache holds the first d messages it
 * holds every shorter prefix too, so the longest shared prefix is found by binary search:
 * O(log n) lookups, whatever the number of caches.
 *
 * The index is a hint, like the retention index: whoever borrows a candidate re-reads its
 * manifest under its lock and checks the chain there before handing it to an engine.
 */

/** What the index knows of one committed cache. */
export interface PrefixFacts {
  /** The isolation scope's id; null or absent for the shared space. */
  scopeId?: string | null | undefined;
  cacheKey: string;
  modelId: string;
  configHash: string;
  fingerprint: string | null;
  kind: "named" | "auto";
  /** Keys 1…k of the conversation the state holds (k ≤ messageCount; the first ones when capped). */
  chain: readonly string[];
  /** Messages the state covers. */
  messageCount: number;
  /** Tokens in the state, when its engine reported them. */
  tokenCount: number | null;
  /** Size of the state file. */
  bytes: number;
}

export interface PrefixCandidate {
  cachePath: string;
  facts: PrefixFacts;
  /** Leading messages the cache's conversation shares with the history. */
  commonMessages: number;
}

/** The history side of a lookup: its chain (`key(i)` = key of the first i messages, i ≤ n). */
export interface HistoryChain {
  readonly length: number;
  key(i: number): string;
}

export interface PrefixLookup {
  /** Cache paths never to return (the turn's own cache, a source that just failed to load). */
  exclude?: ReadonlySet<string> | undefined;
  /** Only caches sharing at least this many messages. Default 1. */
  minCommonMessages?: number | undefined;
  /**
   * Only exact ancestors: caches whose whole conversation is a prefix of the history (for
   * engines that cannot cut a longer state back, e.g. recurrent models). Default false.
   */
  exactAncestor?: boolean | undefined;
  /** Candidates to return at most. Default 4. */
  limit?: number | undefined;
}

/** The scope a chain lives in: isolation scope, model, model fingerprint, config hash. */
export function prefixScope(modelId: string, fingerprint: string | null, configHash: string, scopeId: string | null = null): string {
  // NUL cannot occur in a scope id (hex), model id or config hash (validated path
  // components); a fingerprint is an opaque string, so it goes last.
  return `${scopeId ?? ""}\0${modelId}\0${configHash}\0${fingerprint ?? ""}`;
}

type Members = string | Set<string>;

export class PrefixIndex {
  readonly #byPath = new Map<string, PrefixFacts>();
  /** scope → chain key → the cache paths whose chain contains that key. */
  readonly #scopes = new Map<string, Map<string, Members>>();

  /** Caches indexed (with or without a chain). */
  get size(): number {
    return this.#byPath.size;
  }

  get(cachePath: string): PrefixFacts | undefined {
    return this.#byPath.get(cachePath);
  }

  /** Index `cachePath` as holding `facts` (replacing what was known of it). */
  put(cachePath: string, facts: PrefixFacts): void {
    const old = this.#byPath.get(cachePath);
    if (old === facts) return;
    if (old) this.#unlink(cachePath, old);
    this.#byPath.set(cachePath, facts);
    if (facts.chain.length === 0) return;
    const scope = prefixScope(facts.modelId, facts.fingerprint, facts.configHash, facts.scopeId ?? null);
    let keys = this.#scopes.get(scope);
    if (!keys) this.#scopes.set(scope, (keys = new Map()));
    for (const key of facts.chain) {
      const members = keys.get(key);
      if (members === undefined) keys.set(key, cachePath);
      else if (typeof members === "string") {
        if (members !== cachePath) keys.set(key, new Set([members, cachePath]));
      } else members.add(cachePath);
    }
  }

  remove(cachePath: string): void {
    const old = this.#byPath.get(cachePath);
    if (!old) return;
    this.#byPath.delete(cachePath);
    this.#unlink(cachePath, old);
  }

  clear(): void {
    this.#byPath.clear();
    this.#scopes.clear();
  }

  /**
   * The caches of `scope` sharing the longest message prefix with `history`, best first:
   * most shared messages, then the smallest file (the cheapest to load). The deepest is found
   * in O(log n) lookups; to fill `limit` (fallbacks for a borrow whose best is held), it then
   * walks down to shorter prefixes, one lookup per depth, down to `minCommonMessages`.
   */
  lookup(scope: string, history: HistoryChain, options: PrefixLookup = {}): PrefixCandidate[] {
    const keys = this.#scopes.get(scope);
    const n = history.length - 1; // messages in the history (the chain also has its root)
    const minCommon = Math.max(1, options.minCommonMessages ?? 1);
    const limit = Math.max(1, options.limit ?? 4);
    if (!keys || n < minCommon) return [];
    // Largest d with some cache holding the first d messages (monotone in d).
    let lo = 0;
    let hi = n;
    while (lo < hi) {
      const mid = (lo + hi + 1) >>> 1;
      if (keys.has(history.key(mid))) lo = mid;
      else hi = mid - 1;
    }
    const found: PrefixCandidate[] = [];
    // A cache found at one depth holds every shorter prefix too: each is returned once, at its deepest.
    const seen = new Set<string>(options.exclude);
    for (let depth = lo; depth >= minCommon && found.length < limit; depth--) {
      const members = keys.get(history.key(depth));
      if (members === undefined) continue;
      for (const cachePath of this.#smallest(members, depth, seen, options.exactAncestor === true, limit - found.length)) {
        seen.add(cachePath);
        found.push({ cachePath, facts: this.#byPath.get(cachePath)!, commonMessages: depth });
      }
    }
    return found;
  }

  /** Up to `count` acceptable members at `depth`, smallest files first (a partial selection). */
  #smallest(members: Members, depth: number, skip: ReadonlySet<string>, exactAncestor: boolean, count: number): string[] {
    const picked: string[] = [];
    const consider = (cachePath: string): void => {
      if (skip.has(cachePath)) return;
      const facts = this.#byPath.get(cachePath)!;
      if (exactAncestor && facts.messageCount !== depth) return;
      let at = picked.length;
      while (at > 0 && this.#byPath.get(picked[at - 1]!)!.bytes > facts.bytes) at--;
      if (at >= count) return;
      picked.splice(at, 0, cachePath);
      if (picked.length > count) picked.pop();
    };
    if (typeof members === "string") consider(members);
    else for (const cachePath of members) consider(cachePath);
    return picked;
  }

  #unlink(cachePath: string, facts: PrefixFacts): void {
    if (facts.chain.length === 0) return;
    const scope = prefixScope(facts.modelId, facts.fingerprint, facts.configHash, facts.scopeId ?? null);
    const keys = this.#scopes.get(scope);
    if (!keys) return;
    for (const key of facts.chain) {
      const members = keys.get(key);
      if (members === undefined) continue;
      if (typeof members === "string") {
        if (members === cachePath) keys.delete(key);
      } else {
        members.delete(cachePath);
        if (members.size === 1) keys.set(key, members.values().next().value!);
        else if (members.size === 0) keys.delete(key);
      }
    }
    if (keys.size === 0) this.#scopes.delete(scope);
  }
}
