import { describe, expect, it } from "vitest";
import { autoCacheKey, generateConfigHash, type CacheMessage } from "../../src/index.js";
import { autoKeyChain, autoLookupHistory } from "../../src/keys/auto-key.js";
import { xxh64Hex } from "../../src/keys/hash.js";

describe("generateConfigHash", () => {
  it("returns 16 lowercase hex chars synchronously", () => {
    const hash = generateConfigHash("you are helpful");
    expect(hash).toMatch(/^[0-9a-f]{16}$/);
  });

  it("does not depend on tool order, but on the tool set and the prompt", () => {
    expect(generateConfigHash("p", ["b", "a"])).toBe(generateConfigHash("p", ["a", "b"]));
    expect(generateConfigHash("p", [{ name: "a" }, { function: { name: "b" } }])).toBe(generateConfigHash("p", ["a", "b"]));
    expect(generateConfigHash("p", ["a"])).not.toBe(generateConfigHash("p", ["a", "b"]));
    expect(generateConfigHash("p")).not.toBe(generateConfigHash("q"));
    expect(generateConfigHash(null)).not.toBe(generateConfigHash(""));
    expect(generateConfigHash("p", [])).toBe(generateConfigHash("p"));
  });

  it("cannot be confused by a separator inside the prompt or a tool name", () => {
    expect(generateConfigHash("a", ["b,c"])).not.toBe(generateConfigHash("a", ["b", "c"]));
    expect(generateConfigHash('a","b')).not.toBe(generateConfigHash("a", ["b"]));
  });

  it("rejects a tool without a name with INVALID_ARGUMENT naming tools", () => {
    expect(() => generateConfigHash("p", [{} as { name: string }])).toThrow(expect.objectContaining({ argument: "tools" }));
  });

  it("matches XXH64 of known vectors (the wasm hasher is wired right)", () => {
    // Reference values of XXH64 with seed 0.
    expect(xxh64Hex("")).toBe("ef46db3751d8e999");
    expect(xxh64Hex("abc")).toBe("44bc2cf5ad770999");
  });
});

describe("auto keys", () => {
  const history: CacheMessage[] = [
    { role: "system", content: "s" },
    { role: "user", content: "u1" },
    { role: "assistant", content: "a1" },
    { role: "user", content: "u2", attachments: [{ path: "/tmp/img.png" }] },
  ];

  it("computes the key of every prefix in one pass, each equal to the key of that prefix alone", () => {
    const chain = autoKeyChain(history);
    expect(chain).toHaveLength(history.length + 1);
    chain.forEach((key, i) => expect(key).toBe(autoCacheKey(history.slice(0, i))));
    expect(new Set(chain).size).toBe(chain.length);
  });

  it("normalises assistant content the same on lookup and on save, and only assistant content", () => {
    const saved = autoCacheKey([...history.slice(0, 2), { role: "assistant", content: "\r\n a1 \r\n" }]);
    expect(saved).toBe(autoCacheKey(history.slice(0, 3)));
    expect(autoCacheKey([{ role: "user", content: " u1" }])).not.toBe(autoCacheKey([{ role: "user", content: "u1" }]));
  });

  it("tells attachments, roles and message boundaries apart", () => {
    const base: CacheMessage[] = [{ role: "user", content: "ab" }];
    expect(autoCacheKey([{ ...base[0]!, attachments: [{ path: "x" }] }])).not.toBe(autoCacheKey(base));
    expect(autoCacheKey([{ role: "assistant", content: "ab" }])).not.toBe(autoCacheKey(base));
    expect(autoCacheKey([{ role: "user", content: "a" }, { role: "user", content: "b" }])).not.toBe(autoCacheKey(base));
  });

  it("looks up a new turn by the history without its last message", () => {
    expect(autoLookupHistory(history)).toEqual(history.slice(0, 3));
    expect(autoLookupHistory(history.slice(0, 1))).toEqual([]);
    expect(autoLookupHistory([])).toEqual([]);
  });
});
