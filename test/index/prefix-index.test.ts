import { describe, expect, it } from "vitest";
import { type PrefixFacts, PrefixIndex, prefixScope } from "../../src/prefix/prefix-index.js";
import { messageKeyChain } from "../../src/keys/auto-key.js";
import type { CacheMessage } from "../../src/types.js";

const SYSTEM: CacheMessage = { role: "system", content: "You are terse." };
const msg = (role: string, content: string): CacheMessage => ({ role, content });

/** Facts of a cache holding `history` (model m, config c, no fingerprint unless given). */
function factsOf(history: CacheMessage[], bytes: number, over: Partial<PrefixFacts> = {}): PrefixFacts {
  return {
    cacheKey: "k",
    modelId: "m",
    configHash: "c",
    fingerprint: null,
    kind: "auto",
    chain: messageKeyChain(history).keys().slice(1),
    messageCount: history.length,
    tokenCount: null,
    bytes,
    ...over,
  };
}

const scope = prefixScope("m", null, "c");
const conversation = [SYSTEM, msg("user", "hi"), msg("assistant", "hello"), msg("user", "how are you"), msg("assistant", "fine")];

describe("PrefixIndex", () => {
  it("finds a longer cache for a regenerate: all of the history is shared", () => {
    const index = new PrefixIndex();
    index.put("/a", factsOf(conversation, 100));
    const regenerate = conversation.slice(0, 4);
    const [best] = index.lookup(scope, messageKeyChain(regenerate));
    expect(best).toMatchObject({ cachePath: "/a", commonMessages: 4 });
  });

  it("finds the shared opening of an edit, a fork and a new chat with the same system prompt", () => {
    const index = new PrefixIndex();
    index.put("/a", factsOf(conversation, 100));
    const editLast = [...conversation.slice(0, 3), msg("user", "how old are you")];
    expect(index.lookup(scope, messageKeyChain(editLast))[0]?.commonMessages).toBe(3);
    const editFirst = [SYSTEM, msg("user", "hey")];
    expect(index.lookup(scope, messageKeyChain(editFirst))[0]?.commonMessages).toBe(1);
    const fork = [...conversation, msg("user", "and then?")];
    expect(index.lookup(scope, messageKeyChain(fork))[0]?.commonMessages).toBe(5);
  });

  it("prefers the most shared messages, then the smallest file; returns at most `limit`", () => {
    const index = new PrefixIndex();
    index.put("/long", factsOf(conversation, 500));
    index.put("/short", factsOf(conversation.slice(0, 3), 50));
    index.put("/other-big", factsOf([SYSTEM, msg("user", "x")], 900));
    index.put("/other-small", factsOf([SYSTEM, msg("user", "y")], 10));
    const found = index.lookup(scope, messageKeyChain([...conversation.slice(0, 3), msg("user", "new")]), { limit: 10 });
    expect(found.map((c) => [c.cachePath, c.commonMessages])).toEqual([
      ["/short", 3],
      ["/long", 3],
      ["/other-small", 1],
      ["/other-big", 1],
    ]);
    expect(index.lookup(scope, messageKeyChain(conversation), { limit: 1 })).toHaveLength(1);
  });

  it("never answers across models, fingerprints or configs", () => {
    const index = new PrefixIndex();
    index.put("/fp", factsOf(conversation, 1, { fingerprint: "other-weights" }));
    index.put("/model", factsOf(conversation, 1, { modelId: "m2" }));
    index.put("/config", factsOf(conversation, 1, { configHash: "c2" }));
    expect(index.lookup(scope, messageKeyChain(conversation))).toEqual([]);
    expect(index.lookup(prefixScope("m", "other-weights", "c"), messageKeyChain(conversation))[0]?.cachePath).toBe("/fp");
  });

  it("skips excluded caches and walks down to the next shorter shared prefix", () => {
    const index = new PrefixIndex();
    index.put("/own", factsOf(conversation, 1));
    index.put("/shorter", factsOf(conversation.slice(0, 2), 1));
    const [best] = index.lookup(scope, messageKeyChain(conversation), { exclude: new Set(["/own"]) });
    expect(best).toMatchObject({ cachePath: "/shorter", commonMessages: 2 });
  });

  it("with exactAncestor, returns only caches whose whole conversation is a prefix of the history", () => {
    const index = new PrefixIndex();
    index.put("/longer", factsOf(conversation, 1));
    index.put("/ancestor", factsOf(conversation.slice(0, 3), 999));
    const regenerate = conversation.slice(0, 4);
    const found = index.lookup(scope, messageKeyChain(regenerate), { exactAncestor: true, limit: 10 });
    expect(found.map((c) => c.cachePath)).toEqual(["/ancestor"]);
    expect(found[0]!.commonMessages).toBe(3);
  });

  it("honours minCommonMessages", () => {
    const index = new PrefixIndex();
    index.put("/a", factsOf([SYSTEM, msg("user", "x")], 1));
    expect(index.lookup(scope, messageKeyChain([SYSTEM, msg("user", "y")]), { minCommonMessages: 2 })).toEqual([]);
    expect(index.lookup(scope, messageKeyChain([SYSTEM, msg("user", "y")]), { minCommonMessages: 1 })).toHaveLength(1);
  });

  it("forgets a removed or replaced cache everywhere (no stale key answers)", () => {
    const index = new PrefixIndex();
    index.put("/a", factsOf(conversation, 1));
    index.put("/b", factsOf(conversation, 2));
    index.remove("/a");
    expect(index.lookup(scope, messageKeyChain(conversation), { limit: 10 }).map((c) => c.cachePath)).toEqual(["/b"]);
    // /b now holds another conversation: its old keys no longer answer.
    index.put("/b", factsOf([SYSTEM, msg("user", "other")], 2));
    expect(index.lookup(scope, messageKeyChain(conversation))[0]?.commonMessages).toBe(1);
    index.remove("/b");
    expect(index.lookup(scope, messageKeyChain(conversation))).toEqual([]);
    expect(index.size).toBe(0);
  });

  it("indexes a cache without a chain (a prime) for nothing", () => {
    const index = new PrefixIndex();
    index.put("/prime", factsOf([], 1));
    expect(index.lookup(scope, messageKeyChain(conversation))).toEqual([]);
    expect(index.size).toBe(1);
  });
});
