/**
 * How a commit reads the state an engine saved into memory (src/session/saved-state.ts): with
 * the geometry it expects, only the head, the layer headers and the rows it encodes — and the
 * chunks and tail it then encodes are exactly those of the whole state. Real memfds (the
 * addon), states written from the layout table (test/chunks/synthetic-state.ts).
 */
import { afterAll, describe, expect, it } from "vitest";
import { encodeKvGeometry, parseSeqState, splitSeqState } from "../../src/chunks/state-format.js";
import type { ChunkedState } from "../../src/manifest/format.js";
import type { MemoryFile } from "../../src/native/types.js";
import { readSavedState } from "../../src/session/saved-state.js";
import { buildState, F16_LAYERS, MIXED_LAYERS, type SyntheticState } from "../chunks/synthetic-state.js";
import { nativeSkipped, nativeSuiteName, requireNative } from "../native/helpers.js";

const open: MemoryFile[] = [];
afterAll(() => open.forEach((m) => m.close()));

async function memoryHolding(state: Buffer): Promise<MemoryFile> {
  const memory = requireNative().fs.createMemoryFile("kvkeep-test-saved")!;
  open.push(memory);
  await memory.write(state);
  return memory;
}

/** The manifest's description of a committed state of this shape (what the turn expects). */
function expectedOf(state: Buffer): ChunkedState {
  const layout = parseSeqState(state);
  return {
    context: "0".repeat(32),
    geometry: encodeKvGeometry(layout.geometry!).toString("base64"),
    placement: { ...layout.placement },
    chunkTokens: 4,
    ids: [],
    tokens: layout.tokenCount,
  };
}

const SHAPES: Array<{ name: string; spec: Omit<SyntheticState, "tokenCount"> }> = [
  { name: "F16, V transposed", spec: { layers: F16_LAYERS, vTrans: true } },
  { name: "F16, V rows", spec: { layers: F16_LAYERS, vTrans: false } },
  { name: "Q8_0 K, transposed F16 V", spec: { layers: MIXED_LAYERS, vTrans: true } },
  { name: "three streams, cells in stream 2", spec: { layers: F16_LAYERS, vTrans: true, nStream: 3, holder: 2 } },
];

describe.skipIf(nativeSkipped || process.platform !== "linux")(nativeSuiteName("a commit reading the saved state"), () => {
  it.each(SHAPES)("$name: with the expected geometry it reads the headers and the new rows only, and splits exactly as the whole state", async ({ spec }) => {
    const owner = {};
    // A buffer left dirty by an earlier, shorter state of the conversation: what is not read stays stale.
    const earlier = buildState({ ...spec, tokenCount: 13, salt: 99 });
    const first = await readSavedState(owner, await memoryHolding(earlier), earlier.byteLength, null);
    first.release();

    const state = buildState({ ...spec, tokenCount: 22 });
    const saved = await readSavedState(owner, await memoryHolding(state), state.byteLength, expectedOf(earlier));
    const layout = saved.layout;
    if (layout instanceof Error) throw layout;
    expect(layout).toEqual(parseSeqState(state));
    await saved.readRows(12);
    const mine = splitSeqState(saved.bytes, { chunkTokens: 4, skipChunks: 3, layout });
    const truth = splitSeqState(state, { chunkTokens: 4 });
    expect(mine.chunks.map((c) => c.toString("hex"))).toEqual(truth.chunks.slice(3).map((c) => c.toString("hex")));
    expect(mine.tail.equals(truth.tail)).toBe(true);
    // Sparse indeed: the first token's K row was never read (the stale bytes of the earlier state are there).
    const kRow0 = layout.kOffsets[0]!;
    expect(saved.bytes.subarray(kRow0, kRow0 + 8).equals(state.subarray(kRow0, kRow0 + 8))).toBe(false);
    await saved.readAll();
    expect(saved.bytes.equals(state)).toBe(true);
    saved.release();
  });

  it("a state of another geometry or placement than expected is read whole and parsed as it is", async () => {
    const owner = {};
    const state = buildState({ layers: F16_LAYERS, vTrans: true, tokenCount: 9 });
    for (const other of [buildState({ layers: MIXED_LAYERS, vTrans: true, tokenCount: 9 }), buildState({ layers: F16_LAYERS, vTrans: true, tokenCount: 9, nStream: 2, holder: 1 })]) {
      const saved = await readSavedState(owner, await memoryHolding(state), state.byteLength, expectedOf(other));
      expect(saved.layout).toEqual(parseSeqState(state));
      expect(saved.bytes.equals(state)).toBe(true);
      saved.release();
    }
  });

  it("without an expectation, or for bytes that are no state, it reads everything; a non-state's layout is its format error", async () => {
    const state = buildState({ layers: F16_LAYERS, vTrans: false, tokenCount: 5 });
    const saved = await readSavedState({}, await memoryHolding(state), state.byteLength, null);
    expect(saved.bytes.equals(state)).toBe(true);
    saved.release();
    const junk = Buffer.from("not a sequence state at all");
    const read = await readSavedState({}, await memoryHolding(junk), junk.byteLength, expectedOf(state));
    expect(read.layout).toMatchObject({ code: "STATE_NOT_SEQUENCE" });
    expect(read.bytes.equals(junk)).toBe(true);
    read.release();
  });
});
