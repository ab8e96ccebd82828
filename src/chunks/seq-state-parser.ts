/**
 * Reading a llama.cpp sequence state's layout (`parseSeqState`), checking every count and
 * size against the bytes. Pure. state-format.ts has the layout it reads.
 */
import { StateFormatError } from "./errors.js";
import { type KvGeometry, type LayerKv, makeGeometry, MAX_LAYERS } from "./kv-geometry.js";
import { malformed, Reader, unsupported } from "./state-bytes.js";

/** "ggsq": LLAMA_STATE_SEQ_MAGIC. On disk the bytes are 71 73 67 67. */
export const SEQ_STATE_MAGIC = 0x67677371;
/** The one sequence-state version kvkeep has verified (LLAMA_STATE_SEQ_VERSION in node-llama-cpp 3.22.1's llama.cpp). */
export const SEQ_STATE_VERSION = 3;
/** LLAMA_MAX_SEQ: llama.cpp never has more streams than sequences, nor more than this. */
export const MAX_STREAMS = 256;

export const STATE_HEAD_BYTES = 12; // magic, version, token count
export const CELL_BYTES = 12; // pos, n_seq_id, seq_id

/** Where a sequence's cells sit in the state: the context's stream count, which stream, and the sequence id in each cell. */
export interface StreamPlacement {
  /** The context's `sequences` (llama.cpp's n_stream; 1 with a unified KV cache). */
  readonly nStream: number;
  readonly streamIndex: number;
  readonly seqId: number;
}

export interface SeqStateLayout {
  readonly version: number;
  readonly byteLength: number;
  readonly tokenCount: number;
  /** The token list (a copy). */
  readonly tokens: Int32Array;
  /** Where the cells sit. For an empty state (no cells) stream 0 and seq id 0: nothing says otherwise. */
  readonly placement: StreamPlacement;
  /** Null for an empty state (no cells, so no KV section). */
  readonly geometry: KvGeometry | null;
  /** Offset of the n_stream field. */
  readonly streamsOffset: number;
  /** Offset of the first cell (right after the holding stream's cell count); the KV section runs to `sectionEnd`. */
  readonly cellsOffset: number;
  readonly sectionEnd: number;
  /** Where each layer's K rows and V data begin (after that layer's header). */
  readonly kOffsets: readonly number[];
  readonly vOffsets: readonly number[];
  /** Cell i is at position i for every i: the state can be cut and split exactly. */
  readonly positionsAreIndexes: boolean;
}

/**
 * Read a sequence state's layout, checking every count and size against the bytes. Throws a
 * StateFormatError (see its codes) for anything kvkeep does not fully understand.
 */
export function parseSeqState(state: Uint8Array): SeqStateLayout {
  const r = new Reader(state);
  r.need(STATE_HEAD_BYTES, "the header");
  const magic = r.u32("the magic");
  if (magic !== SEQ_STATE_MAGIC) {
    throw new StateFormatError("STATE_NOT_SEQUENCE", `not a llama.cpp sequence state (magic 0x${magic.toString(16).padStart(8, "0")}, expected 0x67677371 "ggsq").`);
  }
  const version = r.u32("the version");
  if (version !== SEQ_STATE_VERSION) {
    throw new StateFormatError(
      "STATE_VERSION_UNKNOWN",
      `the sequence state is version ${version}; kvkeep has verified only version ${SEQ_STATE_VERSION} (node-llama-cpp 3.22.1). It is kept whole; re-verify the format (docs/chunks-format.md) before splitting this version.`,
    );
  }
  const tokenCount = r.u32("the token count");
  r.need(4 * tokenCount, `${tokenCount} tokens`);
  const tokens = new Int32Array(tokenCount);
  for (let i = 0; i < tokenCount; i++) tokens[i] = r.view.getInt32(r.pos + 4 * i, true);
  r.pos += 4 * tokenCount;

  const streamsOffset = r.pos;
  const nStream = r.u32("the stream count");
  if (nStream === 0 || nStream > MAX_STREAMS) throw malformed(`${nStream} streams (llama.cpp has 1 to ${MAX_STREAMS})`);

  let holder = -1;
  let seqId = 0;
  let cellsOffset = -1;
  let sectionEnd = -1;
  let geometry: KvGeometry | null = null;
  let kOffsets: number[] = [];
  let vOffsets: number[] = [];
  let positionsAreIndexes = true;

  for (let s = 0; s < nStream; s++) {
    const cellCount = r.u32(`stream ${s}'s cell count`);
    if (cellCount === 0) continue;
    if (holder !== -1) throw unsupported(`streams ${holder} and ${s} both hold cells (a whole-context state, not one sequence's)`);
    holder = s;
    if (cellCount !== tokenCount) throw malformed(`it lists ${tokenCount} tokens but holds ${cellCount} KV cells`);

    cellsOffset = r.pos;
    r.need(CELL_BYTES * cellCount, `${cellCount} cells`);
    for (let i = 0; i < cellCount; i++) {
      const at = r.pos + CELL_BYTES * i;
      const pos = r.view.getInt32(at, true);
      const nSeq = r.view.getUint32(at + 4, true);
      const id = r.view.getInt32(at + 8, true);
      if (nSeq !== 1) throw unsupported(`cell ${i} belongs to ${nSeq} sequences (a sequence state has exactly 1 per cell)`);
      if (i === 0) {
        if (id < 0 || id >= MAX_STREAMS) throw malformed(`cell 0 has sequence id ${id}`);
        seqId = id;
      } else if (id !== seqId) {
        throw unsupported(`cells of sequences ${seqId} and ${id} in one state`);
      }
      if (pos !== i) positionsAreIndexes = false;
    }
    r.pos += CELL_BYTES * cellCount;

    const vTransField = r.u32("v_trans");
    if (vTransField > 1) throw malformed(`v_trans is ${vTransField}`);
    const vTrans = vTransField === 1;
    const nLayer = r.u32("the layer count");
    if (nLayer === 0 || nLayer > MAX_LAYERS) throw malformed(`${nLayer} layers`);

    const kHeads: { type: number; row: number }[] = [];
    kOffsets = [];
    for (let l = 0; l < nLayer; l++) {
      const type = r.i32(`layer ${l}'s K type`);
      const row = r.u64(`layer ${l}'s K row size`);
      if (type < 0 || row === 0) throw malformed(`layer ${l}'s K has type ${type} and row size ${row}`);
      kOffsets.push(r.pos);
      r.skip(row * cellCount, `layer ${l}'s K rows`);
      kHeads.push({ type, row });
    }
    const layers: LayerKv[] = [];
    vOffsets = [];
    for (let l = 0; l < nLayer; l++) {
      const vType = r.i32(`layer ${l}'s V type`);
      const k = kHeads[l]!;
      if (vType < 0) throw malformed(`layer ${l}'s V has type ${vType}`);
      if (!vTrans) {
        const row = r.u64(`layer ${l}'s V row size`);
        if (row === 0) throw malformed(`layer ${l}'s V row size is 0`);
        vOffsets.push(r.pos);
        r.skip(row * cellCount, `layer ${l}'s V rows`);
        layers.push({ kType: k.type, kRowBytes: k.row, vType, vRowBytes: row, vElementBytes: 0, vWidth: 0 });
      } else {
        const element = r.u32(`layer ${l}'s V element size`);
        const width = r.u32(`layer ${l}'s V width`);
        if (element === 0 || width === 0) throw malformed(`layer ${l}'s transposed V has element size ${element} and width ${width}`);
        vOffsets.push(r.pos);
        r.skip(element * width * cellCount, `layer ${l}'s V elements`);
        layers.push({ kType: k.type, kRowBytes: k.row, vType, vRowBytes: element * width, vElementBytes: element, vWidth: width });
      }
    }
    sectionEnd = r.pos;
    geometry = makeGeometry(vTrans, layers);
  }

  if (r.pos !== state.byteLength) {
    throw new StateFormatError(
      "STATE_TRAILING_BYTES",
      `${state.byteLength - r.pos} bytes follow the state's KV section (offset ${r.pos}): a second section (a sliding-window model), a recurrent or hybrid model's state, or garbage. It is kept whole.`,
    );
  }
  if (holder === -1 && tokenCount !== 0) throw malformed(`it lists ${tokenCount} tokens but no stream holds cells`);

  const empty = holder === -1;
  const end = empty ? r.pos : sectionEnd;
  return {
    version,
    byteLength: state.byteLength,
    tokenCount,
    tokens,
    placement: { nStream, streamIndex: empty ? 0 : holder, seqId },
    geometry,
    streamsOffset,
    cellsOffset: empty ? end : cellsOffset,
    sectionEnd: end,
    kOffsets,
    vOffsets,
    positionsAreIndexes,
  };
}

/** STATE_NOT_CUTTABLE unless the cells are positions 0..n-1 in order (what a split or a cut needs). */
export function requireCuttable(layout: SeqStateLayout): void {
  if (!layout.positionsAreIndexes) {
    throw new StateFormatError(
      "STATE_NOT_CUTTABLE",
      "the state's cells are not positions 0..n-1 in order (cut back and re-evaluated out of order, or shifted): no cut of it is exact, so it is kept whole.",
    );
  }
}
