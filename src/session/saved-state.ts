/**
 * The state an engine saved into a turn's in-memory file, read as little as a commit needs.
 * With the state's expected geometry and placement (the turn's committed chunked entry), only
 * its head and layer headers are read and parsed, and later only the rows of the tokens the
 * commit encodes (the new chunks and the tail): at 8 000 tokens that is a few hundred KiB of
 * a 64 MiB state. Without them, or when the state turns out to have another geometry, it is
 * read whole. The bytes land in one buffer per store, reused across commits (a fresh
 * state-sized buffer costs more in page faults than the reads; only the pages read are ever
 * touched), dropped after a minute without commits.
 */
import { isStateFormatError, type StateFormatError } from "../chunks/errors.js";
import { decodeKvGeometry, encodeKvGeometry, parseSeqState, type SeqStateLayout, stateHeadRanges, stateRowRanges } from "../chunks/state-format.js";
import type { ChunkedState } from "../manifest/format.js";
import type { MemoryFile } from "../native/index.js";

/** A saved state being read: `bytes` holds every byte the parse read; rows only once asked for. */
export interface SavedState {
  /** The state's size; bytes not yet read are stale. */
  readonly bytes: Buffer;
  /** The parsed layout, or the reason the state cannot be parsed (it is then read whole). */
  readonly layout: SeqStateLayout | StateFormatError;
  /** Make the rows of tokens [from, n) present (the tail and the chunks a commit encodes). */
  readRows(from: number): Promise<void>;
  /** Make every byte present (a state stored whole). */
  readAll(): Promise<void>;
}

/** Read the saved state in `memory` (of `size` bytes), expecting the geometry and placement of `expected` when given. */
export async function readSavedState(owner: object, memory: MemoryFile, size: number, expected: ChunkedState | null): Promise<SavedState & { release(): void }> {
  const scratch = takeScratch(owner, size);
  const bytes = scratch.buffer.subarray(0, size);
  let whole = false;
  const readAll = async (): Promise<void> => {
    if (whole) return;
    await memory.readRanges(bytes, new Float64Array([0, size]), size);
    whole = true;
  };
  let layout: SeqStateLayout | StateFormatError | null = expected ? await readSparse(memory, bytes, size, expected) : null;
  if (layout === null) {
    await readAll();
    try {
      layout = parseSeqState(bytes);
    } catch (error) {
      if (!isStateFormatError(error)) throw error;
      layout = error;
    }
  }
  const parsed = layout;
  return {
    bytes,
    layout: parsed,
    async readRows(from: number): Promise<void> {
      if (whole || isStateFormatError(parsed)) return readAll();
      await memory.readRanges(bytes, new Float64Array(stateRowRanges(parsed, from)), size);
    },
    readAll,
    release: () => releaseScratch(scratch),
  };
}

/** The layout from the head and layer headers alone, when the state has the expected geometry and placement; else null. */
async function readSparse(memory: MemoryFile, bytes: Buffer, size: number, expected: ChunkedState): Promise<SeqStateLayout | null> {
  if (size < 12) return null;
  await memory.readRanges(bytes, new Float64Array([0, 12]), size);
  const geometry = decodeKvGeometry(Buffer.from(expected.geometry, "base64"));
  const ranges = stateHeadRanges(size, bytes.readUInt32LE(8), geometry, expected.placement);
  if (ranges === null) return null;
  await memory.readRanges(bytes, new Float64Array(ranges), size);
  let layout: SeqStateLayout;
  try {
    layout = parseSeqState(bytes);
  } catch {
    return null; // not the expected layout (or not a state): read whole, and parse that
  }
  // Only with exactly the expected geometry and placement did every header the parse read sit where it was read.
  const same =
    layout.geometry !== null &&
    encodeKvGeometry(layout.geometry).equals(encodeKvGeometry(geometry)) &&
    layout.placement.nStream === expected.placement.nStream &&
    layout.placement.streamIndex === expected.placement.streamIndex &&
    layout.placement.seqId === expected.placement.seqId;
  return same ? layout : null;
}

interface Scratch {
  buffer: Buffer;
  busy: boolean;
  timer: ReturnType<typeof setTimeout> | null;
}
const scratches = new WeakMap<object, Scratch>();
const SCRATCH_IDLE_MS = 60_000;
const SCRATCH_STEP = 1 << 20;

/** The owner's reusable buffer of at least `size` bytes (a fresh one when it is in use by another commit). */
function takeScratch(owner: object, size: number): Scratch {
  let slot = scratches.get(owner);
  if (slot && !slot.busy && slot.buffer.byteLength >= size) {
    if (slot.timer) clearTimeout(slot.timer);
    slot.timer = null;
    slot.busy = true;
    return slot;
  }
  // allocUnsafeSlow: untouched pages are never faulted in (only what is read takes memory).
  // With room to grow: a conversation's state grows every turn, and a new state-sized buffer
  // per commit would cost a garbage collection each time (V8 counts it as external memory).
  const fresh: Scratch = { buffer: Buffer.allocUnsafeSlow(Math.ceil((size * 1.25) / SCRATCH_STEP) * SCRATCH_STEP), busy: true, timer: null };
  if (!slot || !slot.busy) scratches.set(owner, fresh);
  return fresh;
}

function releaseScratch(slot: Scratch): void {
  slot.busy = false;
  if (slot.timer) clearTimeout(slot.timer);
  slot.timer = setTimeout(() => {
    slot.buffer = Buffer.alloc(0);
    slot.timer = null;
  }, SCRATCH_IDLE_MS);
  slot.timer.unref?.();
}
