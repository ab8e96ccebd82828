import { describe, expect, it } from "vitest";
import { generateConfigHash, type CacheMessage } from "../../src/index.js";
import { autoCacheKey } from "../../src/keys/index.js";
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

describe("the plain-JavaScript XXH64 (used before the WebAssembly is ready)", () => {
  it("gives the same digests as xxhash-wasm for every length up to 300 bytes and any seed", async () => {
    const { default: xxhash } = await import("xxhash-wasm");
    const { xxh64Halves } = await import("../../src/keys/xxh64.js");
    const wasm = await xxhash();
    let state = 12345;
    const random = (): number => (state = (Math.imul(state, 1103515245) + 12345) >>> 0);
    for (let n = 0; n <= 300; n++) {
      const bytes = Uint8Array.from({ length: n }, () => random() & 0xff);
      for (const seed of [0n, 1n, 0xffffffffffffffffn, (BigInt(random()) << 32n) | BigInt(random())]) {
        const [hi, lo] = xxh64Halves(bytes, n, Number(seed >> 32n), Number(seed & 0xffffffffn));
        expect(((BigInt(hi) << 32n) | BigInt(lo)).toString(16), `length ${n}, seed ${seed}`).toBe(wasm.h64Raw(bytes, seed).toString(16));
      }
    }
  });
});

describe("the auto-key chain memo (recent chains over the same message objects)", () => {
  it("gives the same keys for the same messages whether the objects are reused or rebuilt", () => {
    const history: CacheMessage[] = [
      { role: "system", content: "s" },
      { role: "user", content: "héllo" },
      { role: "assistant", content: "ok" },
    ];
    const first = autoKeyChain(history);
    expect(autoKeyChain(history)).toEqual(first);
    expect(autoKeyChain(history.map((m) => ({ ...m })))).toEqual(first);
  });

  it("never returns a stale key when a message object is edited in place (content, role or attachments)", () => {
    const message: CacheMessage = { role: "user", content: "first" };
    const history: CacheMessage[] = [{ role: "system", content: "s" }, message];
    const before = autoCacheKey(history);
    message.content = "edited";
    const afterEdit = autoCacheKey(history);
    expect(afterEdit).not.toBe(before);
    expect(afterEdit).toBe(autoCacheKey([{ role: "system", content: "s" }, { role: "user", content: "edited" }]));
    message.role = "assistant";
    expect(autoCacheKey(history)).not.toBe(afterEdit);
    message.role = "user";
    message.attachments = [];
    expect(autoCacheKey(history)).toBe(afterEdit);
    (message.attachments as Array<{ path: string }>).push({ path: "/img.png" });
    expect(autoCacheKey(history)).not.toBe(afterEdit);
  });

  it("a history extending or branching off a recent one (same objects) gets exactly the keys of a cold computation", () => {
    const base: CacheMessage[] = [
      { role: "system", content: "s" },
      { role: "user", content: "u1" },
      { role: "assistant", content: "a1" },
    ];
    autoKeyChain(base);
    const extended = [...base, { role: "user", content: "u2" }, { role: "assistant", content: "a2" }];
    const branched = [...base.slice(0, 2), { role: "assistant", content: "other" }];
    const cold = (h: CacheMessage[]) => autoKeyChain(h.map((m) => ({ ...m })));
    expect(autoKeyChain(extended)).toEqual(cold(extended));
    expect(autoKeyChain(branched)).toEqual(cold(branched));
    expect(autoKeyChain(base.slice(0, 1))).toEqual(cold(base.slice(0, 1)));
  });

  it("keys a message by its position: the same message after another prefix gets another key", () => {
    const shared: CacheMessage = { role: "user", content: "same" };
    const a = autoKeyChain([{ role: "system", content: "a" }, shared]);
    const b = autoKeyChain([{ role: "system", content: "b" }, shared]);
    expect(a[2]).not.toBe(b[2]);
    expect(autoKeyChain([{ role: "system", content: "a" }, shared])).toEqual(a);
  });

  it("normalises assistant text to NFC, so composed and decomposed accents find the same cache", () => {
    const composed = autoCacheKey([{ role: "assistant", content: "caf\u00e9" }]);
    expect(autoCacheKey([{ role: "assistant", content: "cafe\u0301" }])).toBe(composed);
    expect(autoCacheKey([{ role: "user", content: "cafe\u0301" }])).not.toBe(autoCacheKey([{ role: "user", content: "caf\u00e9" }]));
  });
});
