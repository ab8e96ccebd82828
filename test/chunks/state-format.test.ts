/**
 * The sequence-state parser, splitter and joiner on states written from the layout table
 * (synthetic-state.ts). test/engine/chunks.test.ts proves the same on the real engine's files.
 */
import { describe, expect, it } from "vitest";
import { isStateFormatError, StateFormatError, type StateFormatErrorCode } from "../../src/chunks/errors.js";
import {
  CHUNK_HEADER_BYTES,
  chunkByteLength,
  cutSeqState,
  decodeKvGeometry,
  encodeKvGeometry,
  joinSeqState,
  joinSeqStateParts,
  parseSeqState,
  readChunkHeader,
  readChunkTokens,
  splitSeqState,
  truncateChunk,
  verifyChunk,
  withPlacement,
} from "../../src/chunks/state-format.js";
import { buildState, F16_LAYERS, MIXED_LAYERS, type SyntheticState, tokenAt } from "./synthetic-state.js";

function expectCode(run: () => unknown, code: StateFormatErrorCode): StateFormatError {
  let caught: unknown;
  try {
    run();
  } catch (error) {
    caught = error;
  }
  expect(isStateFormatError(caught), `expected a StateFormatError ${code}, got ${String(caught)}`).toBe(true);
  expect((caught as StateFormatError).code, (caught as Error).message).toBe(code);
  return caught as StateFormatError;
}

const SHAPES: Array<{ name: string; spec: Omit<SyntheticState, "tokenCount"> }> = [
  { name: "F16, V transposed (flash attention off)", spec: { layers: F16_LAYERS, vTrans: true } },
  { name: "F16, V rows (flash attention on)", spec: { layers: F16_LAYERS, vTrans: false } },
  { name: "Q8_0 K with transposed F16 V", spec: { layers: MIXED_LAYERS, vTrans: true } },
  { name: "Q8_0 K with F16 V rows", spec: { layers: MIXED_LAYERS, vTrans: false } },
  { name: "three streams, cells in stream 2", spec: { layers: F16_LAYERS, vTrans: true, nStream: 3, holder: 2 } },
];

describe("parseSeqState", () => {
  it("describes a state: tokens, placement, geometry and where each layer's data begins", () => {
    const state = buildState({ tokenCount: 5, layers: MIXED_LAYERS, vTrans: true, nStream: 2, holder: 1 });
    const layout = parseSeqState(state);
    expect(layout.version).toBe(3);
    expect(layout.tokenCount).toBe(5);
    expect(Array.from(layout.tokens)).toEqual([0, 1, 2, 3, 4].map((i) => tokenAt(i)));
    expect(layout.placement).toEqual({ nStream: 2, streamIndex: 1, seqId: 1 });
    expect(layout.positionsAreIndexes).toBe(true);
    expect(layout.geometry).toEqual({
      vTrans: true,
      layers: MIXED_LAYERS.map((l) => ({ kType: 8, kRowBytes: 34, vType: 1, vRowBytes: 6, vElementBytes: 2, vWidth: 3 })),
      kvBytesPerToken: 3 * (34 + 6),
    });
    // header 12 + tokens 20 + n_stream 4 + stream 0 count 4 + stream 1 count 4 = 44: the cells
    expect(layout.streamsOffset).toBe(32);
    expect(layout.cellsOffset).toBe(44);
    // cells 60, v_trans + n_layer 8, layer 0's K header 12
    expect(layout.kOffsets[0]).toBe(44 + 60 + 8 + 12);
    expect(layout.kOffsets[1]).toBe(layout.kOffsets[0]! + 5 * 34 + 12);
    expect(layout.sectionEnd).toBe(state.byteLength);
    // STATE-FORMAT.md's size formula for one stream: 28 + 16n + n_layer(24 + n(K + V)) (+4 per extra stream)
    expect(state.byteLength).toBe(28 + 16 * 5 + 3 * (24 + 5 * 40) + 4);
  });

  it("an empty state is 16 + 4·n_stream bytes with no KV section", () => {
    const state = buildState({ tokenCount: 0, layers: F16_LAYERS, vTrans: true });
    expect(state.byteLength).toBe(20);
    const layout = parseSeqState(state);
    expect(layout.tokenCount).toBe(0);
    expect(layout.geometry).toBeNull();
  });

  it("refuses a version other than 3, with its own code", () => {
    for (const version of [0, 1, 2, 4, 0xffffffff]) {
      const error = expectCode(() => parseSeqState(buildState({ tokenCount: 3, layers: F16_LAYERS, vTrans: true, version })), "STATE_VERSION_UNKNOWN");
      expect(error.message).toContain(`version ${version}`);
    }
  });

  it("refuses what is not a sequence state (magic)", () => {
    const state = buildState({ tokenCount: 3, layers: F16_LAYERS, vTrans: true });
    state.write("ggml", 0, "latin1");
    expectCode(() => parseSeqState(state), "STATE_NOT_SEQUENCE");
  });

  it("a state cut short anywhere is refused with a StateFormatError, never read past its end", () => {
    for (const shape of SHAPES) {
      const state = buildState({ ...shape.spec, tokenCount: 4 });
      for (let length = 0; length < state.byteLength; length++) {
        let caught: unknown;
        try {
          parseSeqState(state.subarray(0, length));
        } catch (error) {
          caught = error;
        }
        expect(isStateFormatError(caught), `${shape.name}, ${length} bytes: ${String(caught)}`).toBe(true);
        expect(["STATE_TRUNCATED", "STATE_MALFORMED"]).toContain((caught as StateFormatError).code);
      }
    }
  });

  it("bytes after the KV section (a sliding-window model's second section) are refused", () => {
    const state = buildState({ tokenCount: 4, layers: F16_LAYERS, vTrans: false });
    const second = buildState({ tokenCount: 4, layers: F16_LAYERS.slice(0, 1), vTrans: false }).subarray(12 + 16); // its n_stream onwards
    expectCode(() => parseSeqState(Buffer.concat([state, second])), "STATE_TRAILING_BYTES");
    expectCode(() => parseSeqState(Buffer.concat([state, Buffer.alloc(1)])), "STATE_TRAILING_BYTES");
  });

  it("refuses layouts kvkeep does not split: two streams holding cells, cells of several sequences, mixed sequence ids", () => {
    const one = buildState({ tokenCount: 3, layers: F16_LAYERS, vTrans: true, nStream: 2, holder: 0 });
    const layout = parseSeqState(one);
    // stream 1 gets the same section as stream 0
    const section = one.subarray(layout.cellsOffset - 4, layout.sectionEnd);
    const twoStreams = Buffer.concat([one.subarray(0, layout.sectionEnd), section]);
    expectCode(() => parseSeqState(twoStreams), "STATE_UNSUPPORTED");

    const shared = Buffer.from(one);
    shared.writeUInt32LE(2, layout.cellsOffset + 12 + 4); // cell 1: n_seq_id 2
    expectCode(() => parseSeqState(shared), "STATE_UNSUPPORTED");

    const mixed = Buffer.from(one);
    mixed.writeInt32LE(1, layout.cellsOffset + 12 * 2 + 8); // cell 2: sequence 1
    expectCode(() => parseSeqState(mixed), "STATE_UNSUPPORTED");
  });

  it("refuses contradictory or impossible fields", () => {
    const base = buildState({ tokenCount: 3, layers: F16_LAYERS, vTrans: true });
    const layout = parseSeqState(base);
    const edit = (at: number, value: number, write: "u32" | "i32" = "u32"): Buffer => {
      const copy = Buffer.from(base);
      if (write === "u32") copy.writeUInt32LE(value, at);
      else copy.writeInt32LE(value, at);
      return copy;
    };
    expectCode(() => parseSeqState(edit(layout.cellsOffset - 4, 2)), "STATE_MALFORMED"); // 3 tokens, 2 cells
    expectCode(() => parseSeqState(edit(layout.streamsOffset, 0)), "STATE_MALFORMED"); // no streams
    expectCode(() => parseSeqState(edit(layout.streamsOffset, 257)), "STATE_MALFORMED");
    const vTransAt = layout.cellsOffset + 36;
    expectCode(() => parseSeqState(edit(vTransAt, 2)), "STATE_MALFORMED");
    expectCode(() => parseSeqState(edit(vTransAt + 4, 0)), "STATE_MALFORMED"); // 0 layers
    expectCode(() => parseSeqState(edit(vTransAt + 8, -1, "i32")), "STATE_MALFORMED"); // K type
    expectCode(() => parseSeqState(edit(layout.cellsOffset + 8, -5, "i32")), "STATE_MALFORMED"); // seq id
    const zeroRow = Buffer.from(base);
    zeroRow.writeBigUInt64LE(0n, vTransAt + 12);
    expectCode(() => parseSeqState(zeroRow), "STATE_MALFORMED");
    const hugeRow = Buffer.from(base);
    hugeRow.writeBigUInt64LE(1n << 62n, vTransAt + 12);
    expectCode(() => parseSeqState(hugeRow), "STATE_MALFORMED");
    const bigRow = Buffer.from(base);
    bigRow.writeBigUInt64LE(1n << 40n, vTransAt + 12);
    expectCode(() => parseSeqState(bigRow), "STATE_TRUNCATED");
    // tokens listed, no stream holding cells
    const noCells = Buffer.concat([base.subarray(0, layout.streamsOffset), Buffer.from([1, 0, 0, 0, 0, 0, 0, 0])]);
    expectCode(() => parseSeqState(noCells), "STATE_MALFORMED");
  });

  it("cells out of position order parse, but are neither cut nor split", () => {
    const state = buildState({ tokenCount: 4, layers: F16_LAYERS, vTrans: true, positions: [0, 2, 1, 3] });
    const layout = parseSeqState(state);
    expect(layout.positionsAreIndexes).toBe(false);
    expectCode(() => splitSeqState(state), "STATE_NOT_CUTTABLE");
    expectCode(() => cutSeqState(state, 2), "STATE_NOT_CUTTABLE");
    expectCode(() => cutSeqState(state, 4), "STATE_NOT_CUTTABLE");
    // a placement rewrite copies the cells as they are
    expect(parseSeqState(withPlacement(state, { nStream: 2 })).positionsAreIndexes).toBe(false);
  });
});

describe("splitSeqState / joinSeqState", () => {
  it.each(SHAPES)("a round trip is byte-identical for every length and chunk size ($name)", ({ spec }) => {
    for (const tokenCount of [0, 1, 2, 5, 7, 8, 9, 16, 23]) {
      const state = buildState({ ...spec, tokenCount });
      const layout = parseSeqState(state);
      for (const chunkTokens of [1, 3, 8, 256]) {
        const split = splitSeqState(state, { chunkTokens });
        expect(split.chunks).toHaveLength(Math.floor(tokenCount / chunkTokens));
        expect(readChunkHeader(split.tail).tokenCount).toBe(tokenCount % chunkTokens);
        for (const chunk of split.chunks) expect(chunk.byteLength).toBe(chunkByteLength(layout.geometry, chunkTokens));
        const joined = joinSeqState({ geometry: layout.geometry, pieces: [...split.chunks, split.tail], placement: layout.placement, verifyChecksums: true });
        expect(joined.equals(state), `${tokenCount} tokens, chunks of ${chunkTokens}`).toBe(true);
      }
    }
  });

  it("a chunk holds its run's tokens, its first position, and K/V of those tokens only", () => {
    const state = buildState({ tokenCount: 10, layers: F16_LAYERS, vTrans: true });
    const { chunks, tail, layout } = splitSeqState(state, { chunkTokens: 4 });
    expect(chunks.map((c) => readChunkHeader(c).firstPosition)).toEqual([0, 4]);
    expect(readChunkHeader(tail).firstPosition).toBe(8);
    expect(Array.from(readChunkTokens(chunks[1]!))).toEqual([4, 5, 6, 7].map((i) => tokenAt(i)));
    // the same run cut from a longer state is the same chunk: nothing in it depends on what follows
    const longer = splitSeqState(buildState({ tokenCount: 23, layers: F16_LAYERS, vTrans: true }), { chunkTokens: 4 });
    expect(longer.chunks[1]!.equals(chunks[1]!)).toBe(true);
    expect(chunks[1]!.byteLength).toBe(CHUNK_HEADER_BYTES + 4 * (4 + layout.geometry!.kvBytesPerToken));
  });

  it("a shared prefix's chunks joined with another conversation's later chunks and tail give that conversation's state", () => {
    for (const vTrans of [true, false]) {
      const a = buildState({ tokenCount: 21, layers: MIXED_LAYERS, vTrans, salt: 5, saltFrom: 9 });
      const b = buildState({ tokenCount: 18, layers: MIXED_LAYERS, vTrans, salt: 9, saltFrom: 9 });
      const splitA = splitSeqState(a, { chunkTokens: 4 });
      const splitB = splitSeqState(b, { chunkTokens: 4 });
      // tokens 0..8 are shared: chunks 0 and 1 are identical, chunk 2 (8..11) is not
      expect(splitA.chunks[0]!.equals(splitB.chunks[0]!)).toBe(true);
      expect(splitA.chunks[1]!.equals(splitB.chunks[1]!)).toBe(true);
      expect(splitA.chunks[2]!.equals(splitB.chunks[2]!)).toBe(false);
      const joined = joinSeqState({ geometry: splitB.layout.geometry, pieces: [splitA.chunks[0]!, splitA.chunks[1]!, ...splitB.chunks.slice(2), splitB.tail] });
      expect(joined.equals(b)).toBe(true);
    }
  });

  it("skipChunks encodes only the chunks the caller does not hold yet", () => {
    const state = buildState({ tokenCount: 13, layers: F16_LAYERS, vTrans: false });
    const all = splitSeqState(state, { chunkTokens: 3 });
    const rest = splitSeqState(state, { chunkTokens: 3, skipChunks: 2 });
    expect(rest.chunks).toHaveLength(2);
    expect(rest.chunks[0]!.equals(all.chunks[2]!)).toBe(true);
    expect(rest.tail.equals(all.tail)).toBe(true);
    expect(splitSeqState(state, { chunkTokens: 3, skipChunks: 9 }).chunks).toHaveLength(0);
  });

  it("without checksums the header says so and the bytes are otherwise the same", () => {
    const state = buildState({ tokenCount: 7, layers: F16_LAYERS, vTrans: true });
    const withSums = splitSeqState(state, { chunkTokens: 4 });
    const without = splitSeqState(state, { chunkTokens: 4, checksums: false });
    expect(readChunkHeader(without.chunks[0]!).checksum).toBeNull();
    expect(readChunkHeader(withSums.chunks[0]!).checksum).not.toBeNull();
    expect(without.chunks[0]!.subarray(CHUNK_HEADER_BYTES).equals(withSums.chunks[0]!.subarray(CHUNK_HEADER_BYTES))).toBe(true);
    expect(joinSeqState({ geometry: without.layout.geometry, pieces: [...without.chunks, without.tail], verifyChecksums: true }).equals(state)).toBe(true);
  });

  it("the parts of a join are views of the chunks (no copy of the KV) that concatenate to the state", () => {
    const state = buildState({ tokenCount: 9, layers: F16_LAYERS, vTrans: false });
    const { chunks, tail, layout } = splitSeqState(state, { chunkTokens: 4 });
    const { parts, byteLength, tokenCount } = joinSeqStateParts({ geometry: layout.geometry, pieces: [...chunks, tail] });
    expect(tokenCount).toBe(9);
    expect(byteLength).toBe(state.byteLength);
    expect(Buffer.concat(parts).equals(state)).toBe(true);
    expect(parts.some((p) => p.buffer === chunks[0]!.buffer)).toBe(true);
  });

  it("a piece that does not belong is refused: out of order, missing, another geometry, torn, corrupt", () => {
    const state = buildState({ tokenCount: 10, layers: F16_LAYERS, vTrans: true });
    const { chunks, tail, layout } = splitSeqState(state, { chunkTokens: 4 });
    const geometry = layout.geometry;
    expectCode(() => joinSeqState({ geometry, pieces: [chunks[1]!, chunks[0]!, tail] }), "CHUNK_MISMATCH");
    expectCode(() => joinSeqState({ geometry, pieces: [chunks[0]!, tail] }), "CHUNK_MISMATCH");
    const other = splitSeqState(buildState({ tokenCount: 10, layers: F16_LAYERS, vTrans: false }), { chunkTokens: 4 });
    expectCode(() => joinSeqState({ geometry, pieces: [other.chunks[0]!, chunks[1]!, tail] }), "CHUNK_MISMATCH");
    expectCode(() => joinSeqState({ geometry, pieces: [chunks[0]!.subarray(0, chunks[0]!.byteLength - 1), chunks[1]!, tail] }), "CHUNK_MISMATCH");
    expectCode(() => joinSeqState({ geometry, pieces: [Buffer.concat([chunks[0]!, Buffer.alloc(2)]), chunks[1]!, tail] }), "CHUNK_MISMATCH");
    const corrupt = Buffer.from(chunks[1]!);
    corrupt[corrupt.byteLength - 1]! ^= 0x40;
    expectCode(() => joinSeqState({ geometry, pieces: [chunks[0]!, corrupt, tail], verifyChecksums: true }), "CHUNK_MISMATCH");
    expectCode(() => verifyChunk(corrupt, geometry), "CHUNK_MISMATCH");
    // without verification the bytes are taken as they are (the store checks its own files its own way)
    expect(joinSeqState({ geometry, pieces: [chunks[0]!, corrupt, tail] }).equals(state)).toBe(false);
    const notAChunk = Buffer.from(chunks[0]!);
    notAChunk.writeUInt32LE(0x12345678, 0);
    expectCode(() => readChunkHeader(notAChunk), "CHUNK_MISMATCH");
    const future = Buffer.from(chunks[0]!);
    future.writeUInt16LE(2, 4);
    expectCode(() => readChunkHeader(future), "CHUNK_MISMATCH");
    // tokens with no KV at all (geometry digest 0, sized for tokens only): never a state
    const bare = Buffer.concat([chunks[0]!.subarray(0, CHUNK_HEADER_BYTES), Buffer.alloc(8)]);
    bare.writeUInt32LE(2, 8);
    bare.writeUInt16LE(0, 6);
    bare.writeBigUInt64LE(0n, 16);
    expectCode(() => joinSeqState({ geometry: null, pieces: [bare] }), "CHUNK_MISMATCH");
  });

  it("an empty state splits into no chunks and an empty tail, and joins back to its 20 bytes", () => {
    const state = buildState({ tokenCount: 0, layers: F16_LAYERS, vTrans: true });
    const split = splitSeqState(state);
    expect(split.chunks).toHaveLength(0);
    expect(readChunkHeader(split.tail).tokenCount).toBe(0);
    expect(joinSeqState({ geometry: null, pieces: [split.tail] }).equals(state)).toBe(true);
    expect(joinSeqState({ geometry: null, pieces: [] }).equals(state)).toBe(true);
  });
});

describe("cutSeqState", () => {
  it.each(SHAPES)("the cut at every M is the state of the first M tokens ($name)", ({ spec }) => {
    const state = buildState({ ...spec, tokenCount: 11 });
    for (let m = 0; m <= 11; m++) {
      expect(cutSeqState(state, m).equals(buildState({ ...spec, tokenCount: m })), `M = ${m}`).toBe(true);
    }
    expect(() => cutSeqState(state, 12)).toThrow(RangeError);
    expect(() => cutSeqState(state, -1)).toThrow(RangeError);
  });
});

describe("truncateChunk", () => {
  it.each(SHAPES)("the chunks before M and the chunk holding M cut at M join to the state of the first M tokens ($name)", ({ spec }) => {
    const state = buildState({ ...spec, tokenCount: 11 });
    const { chunks, tail, layout } = splitSeqState(state, { chunkTokens: 4 });
    const all = [...chunks, tail];
    const placement = layout.placement;
    for (let m = 0; m <= 11; m++) {
      const k = Math.floor(m / 4);
      const pieces = all.slice(0, k);
      if (m % 4 !== 0) pieces.push(truncateChunk(all[k]!, layout.geometry, m % 4));
      const joined = joinSeqState({ geometry: layout.geometry, pieces, placement, verifyChecksums: true });
      expect(joined.equals(buildState({ ...spec, tokenCount: m })), `M = ${m}`).toBe(true);
    }
  });

  it("keeps the chunk's position, may keep nothing, and refuses more tokens than the chunk holds", () => {
    const { chunks, layout } = splitSeqState(buildState({ tokenCount: 8, layers: F16_LAYERS, vTrans: true }), { chunkTokens: 4 });
    const cut = truncateChunk(chunks[1]!, layout.geometry, 0, { checksums: false });
    expect(readChunkHeader(cut)).toMatchObject({ tokenCount: 0, firstPosition: 4, checksum: null });
    expect(truncateChunk(chunks[1]!, layout.geometry, 4).equals(chunks[1]!)).toBe(true);
    expect(() => truncateChunk(chunks[1]!, layout.geometry, 5)).toThrow(RangeError);
    const other = parseSeqState(buildState({ tokenCount: 1, layers: MIXED_LAYERS, vTrans: true })).geometry;
    expectCode(() => truncateChunk(chunks[1]!, other, 2), "CHUNK_MISMATCH");
  });
});

describe("withPlacement", () => {
  it("moves the cells to another stream count, stream and sequence id, and back", () => {
    const spec = { tokenCount: 6, layers: MIXED_LAYERS, vTrans: true } as const;
    const one = buildState(spec);
    const four = withPlacement(one, { nStream: 4, streamIndex: 2, seqId: 2 });
    expect(four.equals(buildState({ ...spec, nStream: 4, holder: 2, seqId: 2 }))).toBe(true);
    expect(withPlacement(four, { nStream: 1, seqId: 0 }).equals(one)).toBe(true);
    // only the stream fields change when no sequence id is given
    const kept = parseSeqState(withPlacement(four, { nStream: 1 }));
    expect(kept.placement).toEqual({ nStream: 1, streamIndex: 0, seqId: 2 });
    // the stream follows the sequence id with several streams
    expect(parseSeqState(withPlacement(one, { nStream: 3, seqId: 1 })).placement).toEqual({ nStream: 3, streamIndex: 1, seqId: 1 });
    expect(() => withPlacement(one, { nStream: 2, streamIndex: 2 })).toThrow(RangeError);
    expect(() => withPlacement(one, { nStream: 0 })).toThrow(RangeError);
    const empty = buildState({ ...spec, tokenCount: 0 });
    expect(withPlacement(empty, { nStream: 3 }).equals(buildState({ ...spec, tokenCount: 0, nStream: 3 }))).toBe(true);
  });

  it("a join and a cut take a placement too", () => {
    const spec = { tokenCount: 9, layers: F16_LAYERS, vTrans: false } as const;
    const one = buildState(spec);
    const target = buildState({ ...spec, nStream: 2, holder: 1, seqId: 1 });
    const { chunks, tail, layout } = splitSeqState(one, { chunkTokens: 4 });
    expect(joinSeqState({ geometry: layout.geometry, pieces: [...chunks, tail], placement: { nStream: 2, seqId: 1 } }).equals(target)).toBe(true);
    expect(cutSeqState(target, 9, { placement: { nStream: 1, seqId: 0 } }).equals(one)).toBe(true);
  });
});

describe("KV geometry encoding", () => {
  it("round-trips, is the state's own header fields, and refuses other bytes", () => {
    for (const vTrans of [true, false]) {
      const geometry = parseSeqState(buildState({ tokenCount: 2, layers: MIXED_LAYERS, vTrans })).geometry!;
      const bytes = encodeKvGeometry(geometry);
      expect(bytes.byteLength).toBe(8 + 24 * MIXED_LAYERS.length);
      expect(decodeKvGeometry(bytes)).toEqual(geometry);
    }
    expectCode(() => decodeKvGeometry(Buffer.alloc(7)), "STATE_TRUNCATED");
    expectCode(() => decodeKvGeometry(Buffer.from([0, 0, 0, 0, 1, 0, 0, 0])), "STATE_MALFORMED");
  });
});
