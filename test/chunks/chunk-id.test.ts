import { describe, expect, it } from "vitest";
import { attentionRotationSetting, chunkChain, chunkId, stateContext, type StateContextParts } from "../../src/chunks/chunk-id.js";
import { parseSeqState } from "../../src/chunks/state-format.js";
import { buildState, F16_LAYERS, MIXED_LAYERS } from "./synthetic-state.js";

const f16 = parseSeqState(buildState({ tokenCount: 1, layers: F16_LAYERS, vTrans: true })).geometry!;
const f16Rows = parseSeqState(buildState({ tokenCount: 1, layers: F16_LAYERS, vTrans: false })).geometry!;
const q8 = parseSeqState(buildState({ tokenCount: 1, layers: MIXED_LAYERS, vTrans: true })).geometry!;

const BASE: StateContextParts = { modelFingerprint: "0123456789abcdef", geometry: f16, attentionRotation: "default", sequences: 1, chunkTokens: 4 };
const range = (from: number, to: number): number[] => Array.from({ length: to - from }, (_, i) => from + i);

describe("stateContext", () => {
  it("changes with everything the KV depends on", () => {
    const variants: StateContextParts[] = [
      { ...BASE, modelFingerprint: "0123456789abcdee" },
      { ...BASE, geometry: f16Rows }, // flash attention on: V not transposed
      { ...BASE, geometry: q8 }, // KV types
      { ...BASE, attentionRotation: "disabled" },
      { ...BASE, sequences: 2 },
      { ...BASE, chunkTokens: 8 },
      { ...BASE, extra: ["llama.cpp de3ff815"] },
    ];
    const digests = new Set([stateContext(BASE).digest, ...variants.map((v) => stateContext(v).digest)]);
    expect(digests.size).toBe(variants.length + 1);
    expect(stateContext({ ...BASE }).digest).toBe(stateContext(BASE).digest);
  });

  it("fields are length-prefixed: extras that concatenate alike still differ", () => {
    expect(stateContext({ ...BASE, extra: ["ab", "c"] }).digest).not.toBe(stateContext({ ...BASE, extra: ["a", "bc"] }).digest);
    expect(stateContext({ ...BASE, extra: ["abc"] }).digest).not.toBe(stateContext({ ...BASE, extra: ["ab", "c"] }).digest);
    expect(stateContext({ ...BASE, extra: [] }).digest).toBe(stateContext(BASE).digest);
  });

  it("refuses a chunk size or sequence count that is not a positive integer", () => {
    expect(() => stateContext({ ...BASE, chunkTokens: 0 })).toThrow(RangeError);
    expect(() => stateContext({ ...BASE, sequences: 1.5 })).toThrow(RangeError);
  });
});

describe("chunk identities", () => {
  const context = stateContext(BASE);

  it("are stable across releases (stored chunks are found by them): known answers", () => {
    expect(context.digest).toBe("b95911678adb780ed6cccc2ea4102a94");
    expect(chunkChain(context, range(1, 10))).toEqual(["ecd7c591393386d8202bd1d205c1c0e5", "85d3e67b314aa42404cb2894f7f17733"]);
  });

  it("two conversations share exactly the ids of the full chunks their common prefix covers", () => {
    const shared = range(100, 110); // 10 tokens: chunks 0 and 1 are fully shared, chunk 2 is not
    const a = chunkChain(context, [...shared, 1, 2, 3, 4, 5, 6]);
    const b = chunkChain(context, [...shared, 7, 8, 9, 10, 11, 12, 13]);
    expect(a).toHaveLength(4);
    expect(b).toHaveLength(4);
    expect(a.slice(0, 2)).toEqual(b.slice(0, 2));
    expect(a[2]).not.toBe(b[2]);
    // a change in the first token changes every id after it, even where the tokens agree again
    const c = chunkChain(context, [999, ...shared.slice(1), 1, 2, 3, 4, 5, 6]);
    for (let i = 0; i < 4; i++) expect(c[i]).not.toBe(a[i]);
  });

  it("the same tokens at another place in the chain are another chunk", () => {
    const run = [5, 6, 7, 8];
    const first = chunkId(context, null, run);
    const second = chunkId(context, first, run);
    expect(second).not.toBe(first);
    expect(chunkChain(context, [...run, ...run])).toEqual([first, second]);
  });

  it("the tail (the last partial chunk) has no id; every id is 32 lowercase hex characters", () => {
    expect(chunkChain(context, range(0, 3))).toEqual([]);
    const ids = chunkChain(context, range(0, 11));
    expect(ids).toHaveLength(2);
    for (const id of ids) expect(id).toMatch(/^[0-9a-f]{32}$/);
    expect(chunkChain(context, new Int32Array(range(0, 11)))).toEqual(ids);
  });

  it("depend on the state context", () => {
    const other = stateContext({ ...BASE, attentionRotation: "disabled" });
    expect(chunkId(other, null, [1, 2, 3, 4])).not.toBe(chunkId(context, null, [1, 2, 3, 4]));
  });

  it("refuse what is not a chunk: no tokens, more than a chunk's worth, non-32-bit tokens, a malformed parent", () => {
    expect(() => chunkId(context, null, [])).toThrow(RangeError);
    expect(() => chunkId(context, null, [1, 2, 3, 4, 5])).toThrow(RangeError);
    expect(() => chunkId(context, null, [1.5])).toThrow(TypeError);
    expect(() => chunkId(context, null, [2 ** 31])).toThrow(TypeError);
    expect(() => chunkId(context, "ABC", [1])).toThrow(TypeError);
  });
});

describe("attentionRotationSetting", () => {
  it("reads LLAMA_ATTN_ROT_DISABLE as llama.cpp's atoi does", () => {
    expect(attentionRotationSetting({})).toBe("default");
    expect(attentionRotationSetting({ LLAMA_ATTN_ROT_DISABLE: "1" })).toBe("disabled");
    expect(attentionRotationSetting({ LLAMA_ATTN_ROT_DISABLE: " 2x" })).toBe("disabled");
    expect(attentionRotationSetting({ LLAMA_ATTN_ROT_DISABLE: "-1" })).toBe("disabled");
    expect(attentionRotationSetting({ LLAMA_ATTN_ROT_DISABLE: "0" })).toBe("default");
    expect(attentionRotationSetting({ LLAMA_ATTN_ROT_DISABLE: "" })).toBe("default");
    expect(attentionRotationSetting({ LLAMA_ATTN_ROT_DISABLE: "yes" })).toBe("default");
  });
});
