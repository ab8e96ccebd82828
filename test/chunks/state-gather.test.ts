/**
 * The gather plan: a join described as ranges of chunk files and buffers. Carried out here in
 * plain JavaScript (test/native/memory-gather.test.ts carries it out with the addon), it gives
 * the very bytes joinSeqState gives, for every layout.
 */
import { describe, expect, it } from "vitest";
import { type GatherPlan, gatherPlan, joinSeqState, splitSeqState, truncateChunk } from "../../src/chunks/state-format.js";
import { buildState, F16_LAYERS, MIXED_LAYERS, type SyntheticState } from "./synthetic-state.js";

/** What MemoryFile.gather does with a plan, in JavaScript: every byte written exactly once. */
function applyGatherPlan(plan: GatherPlan, files: readonly Uint8Array[]): Buffer {
  const out = Buffer.alloc(plan.size, 0xee);
  const written = new Uint8Array(plan.size);
  const seen = new Set<number>();
  let current = -1;
  expect(plan.runs.length % 7).toBe(0);
  for (let i = 0; i < plan.runs.length; i += 7) {
    const [source, src, dst, len, count, srcStride, dstStride] = Array.from(plan.runs.subarray(i, i + 7));
    if (source !== current) {
      expect(seen.has(source!), "the runs of one source are together").toBe(false);
      seen.add(source!);
      current = source!;
    }
    expect(count).toBeGreaterThanOrEqual(1);
    const from = source! < files.length ? files[source!]! : plan.literals[source! - files.length]!;
    for (let k = 0; k < count!; k++) {
      const s = src! + k * srcStride!;
      const d = dst! + k * dstStride!;
      expect(s + len!).toBeLessThanOrEqual(from.byteLength);
      out.set(from.subarray(s, s + len!), d);
      for (let b = d; b < d + len!; b++) written[b]!++;
    }
  }
  expect(written.every((n) => n === 1), "every byte of the state written exactly once").toBe(true);
  return out;
}

const SHAPES: Array<{ name: string; spec: Omit<SyntheticState, "tokenCount"> }> = [
  { name: "F16, V transposed", spec: { layers: F16_LAYERS, vTrans: true } },
  { name: "F16, V rows", spec: { layers: F16_LAYERS, vTrans: false } },
  { name: "Q8_0 K, transposed F16 V", spec: { layers: MIXED_LAYERS, vTrans: true } },
  { name: "three streams, cells in stream 2", spec: { layers: F16_LAYERS, vTrans: true, nStream: 3, holder: 2 } },
];

describe("gatherPlan", () => {
  it.each(SHAPES)("$name: full chunks from files and the tail at hand give the state byte for byte", ({ spec }) => {
    for (const tokenCount of [1, 4, 9, 12]) {
      const state = buildState({ ...spec, tokenCount });
      const { chunks, tail, layout } = splitSeqState(state, { chunkTokens: 4 });
      const plan = gatherPlan({
        geometry: layout.geometry!,
        files: chunks.length,
        pieces: [...chunks.map((_, file) => ({ file, tokenCount: 4 })), ...(tail.byteLength > 32 ? [{ bytes: tail }] : [])],
        placement: layout.placement,
      });
      expect(plan.tokenCount).toBe(tokenCount);
      expect(applyGatherPlan(plan, chunks).equals(state), `${tokenCount} tokens`).toBe(true);
    }
  });

  it("a transposed V layer of a chunk is one strided run (a copy per element row), not a run per row", () => {
    const state = buildState({ layers: F16_LAYERS, vTrans: true, tokenCount: 12 });
    const { chunks, layout } = splitSeqState(state, { chunkTokens: 4 });
    const plan = gatherPlan({ geometry: layout.geometry!, files: chunks.length, pieces: chunks.map((_, file) => ({ file, tokenCount: 4 })) });
    const layers = layout.geometry!.layers;
    const ofFile0 = [];
    for (let i = 0; i < plan.runs.length; i += 7) if (plan.runs[i] === 0) ofFile0.push(Array.from(plan.runs.subarray(i, i + 7)));
    // Its tokens, each layer's K, each layer's V block.
    expect(ofFile0).toHaveLength(1 + 2 * layers.length);
    const vRuns = ofFile0.slice(1 + layers.length);
    vRuns.forEach(([, , , len, count, srcStride, dstStride], l) => {
      expect([len, count, srcStride]).toEqual([4 * layers[l]!.vElementBytes, layers[l]!.vWidth, 4 * layers[l]!.vElementBytes]);
      expect(dstStride).toBe(12 * layers[l]!.vElementBytes); // a row of the state: all 12 tokens
    });
    expect(applyGatherPlan(plan, chunks).equals(state)).toBe(true);
  });

  it("a chain cut inside a chunk (a borrow) equals the join of the same pieces", () => {
    const state = buildState({ layers: F16_LAYERS, vTrans: true, tokenCount: 11 });
    const { chunks, layout } = splitSeqState(state, { chunkTokens: 4 });
    const cut = truncateChunk(chunks[1]!, layout.geometry, 3);
    const plan = gatherPlan({ geometry: layout.geometry!, files: 1, pieces: [{ file: 0, tokenCount: 4 }, { bytes: cut }] });
    expect(applyGatherPlan(plan, [chunks[0]!]).equals(joinSeqState({ geometry: layout.geometry, pieces: [chunks[0]!, cut] }))).toBe(true);
  });

  it("a piece at hand that does not continue the chain is refused", () => {
    const state = buildState({ layers: F16_LAYERS, vTrans: false, tokenCount: 9 });
    const { chunks, tail, layout } = splitSeqState(state, { chunkTokens: 4 });
    expect(() => gatherPlan({ geometry: layout.geometry!, files: chunks.length, pieces: [{ file: 0, tokenCount: 4 }, { bytes: tail }] })).toThrow(/position 8 where the chain has reached 4/);
    expect(() => gatherPlan({ geometry: layout.geometry!, files: 1, pieces: [{ file: 1, tokenCount: 4 }] })).toThrow(RangeError);
  });
});
