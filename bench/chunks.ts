/**
 * The groundwork of token chunks, measured side by side in one run on the realistic model
 * (512-dim, 8 layers, F16 KV: 8 208 B per token) at ~2 000 tokens (~16 MB of state):
 *
 *   split / join     — splitSeqState (with and without chunk checksums), joinSeqState into one
 *                      new Buffer, joinSeqStateParts (views for a gather write), per MB, for V
 *                      rows (flash attention on) and transposed V (off: E small runs per layer);
 *   identities       — chunkChain over the tokens (SHA-256), with XXH64 over the same bytes
 *                      for scale;
 *   memfd vs file    — the engine saving to and loading from a memfd path against a regular
 *                      file on disk (page cache, no fsync: the store's fsync is not part of
 *                      this comparison), and the in-memory pipelines kvkeep would run: save →
 *                      memfd → read → split, and read chunks → join → gather write → load.
 *
 * Each figure is a median over repeats in shuffled order, after one untimed round. Two clocks: wall
 * time, and the process's CPU time (user + system, every thread) — on a shared machine the
 * CPU time is the steadier of the two (a descheduled process accrues wall time, not CPU time).
 * Fresh multi-MB buffers cost page faults (joinSeqState into a new Buffer shows it); the
 * pipelines read into a reused buffer and gather-write views. No goal is asserted.
 *   npx tsx bench/chunks.ts            (BENCH_REPEATS=9, BENCH_TOKENS=2000 by default)
 */
import { closeSync, fstatSync, mkdtempSync, openSync, readFileSync, readSync, rmSync, writeFileSync } from "node:fs";
import { readFile } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import type { LlamaContext, LlamaContextSequence } from "node-llama-cpp";
import { chunkChain, stateContext } from "../src/chunks/chunk-id.js";
import { joinSeqState, joinSeqStateParts, parseSeqState, splitSeqState } from "../src/chunks/state-format.js";
import { hashReady, xxh64 } from "../src/keys/hash.js";
import { loadNativeFs } from "../src/native/index.js";
import { createContext, loadFixtureModel } from "../test/fixtures/engine.js";
import { median, nowMs, table } from "./lib.js";

const repeats = Number(process.env.BENCH_REPEATS ?? 9);
const targetTokens = Number(process.env.BENCH_TOKENS ?? 2000);
const CONTEXT = 4096;

interface Timing {
  /** Median wall ms. */
  readonly wall: number;
  /** Median process CPU ms (user + system, all threads). */
  readonly cpu: number;
}

/** A seeded shuffle (mulberry32): each round runs the variants in another order. */
function shuffled<T>(items: readonly T[], seed: number): T[] {
  const out = [...items];
  let state = seed >>> 0;
  for (let i = out.length - 1; i > 0; i--) {
    state = (state + 0x6d2b79f5) >>> 0;
    let t = Math.imul(state ^ (state >>> 15), state | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    const j = ((t ^ (t >>> 14)) >>> 0) % (i + 1);
    [out[i], out[j]] = [out[j]!, out[i]!];
  }
  return out;
}

/**
 * Every variant once untimed (JIT, first touches), then `rounds` rounds, each running every
 * variant once in a shuffled order (a garbage collection that one variant's allocations make
 * due lands on a random variant, not always on the one after it); medians of both clocks.
 */
async function measure<K extends string>(rounds: number, variants: Record<K, () => unknown>): Promise<Record<K, Timing>> {
  const entries = Object.entries(variants) as Array<[K, () => unknown]>;
  for (const [, run] of entries) await run();
  const walls = new Map<K, number[]>(entries.map(([k]) => [k, []]));
  const cpus = new Map<K, number[]>(entries.map(([k]) => [k, []]));
  for (let i = 0; i < rounds; i++) {
    for (const [name, run] of shuffled(entries, i + 1)) {
      const cpu0 = process.cpuUsage();
      const wall0 = nowMs();
      await run();
      const wall = nowMs() - wall0;
      const cpu = process.cpuUsage(cpu0);
      walls.get(name)!.push(wall);
      cpus.get(name)!.push((cpu.user + cpu.system) / 1000);
    }
  }
  return Object.fromEntries(entries.map(([k]) => [k, { wall: median(walls.get(k)!), cpu: median(cpus.get(k)!) }])) as Record<K, Timing>;
}

const fmt = (ms: number): number => Number(ms.toFixed(ms < 1 ? 3 : 2));
const ratio = (a: number, b: number): number => Number((a / b).toFixed(2));

await hashReady;
const nfs = loadNativeFs();
const dir = mkdtempSync(path.join(os.tmpdir(), "kvkeep-bench-chunks-"));
const { model } = await loadFixtureModel("realistic");
const contexts: LlamaContext[] = [];
const text = "Policy: be helpful and brief, answer in full sentences, and cite the handbook. ".repeat(Math.ceil(targetTokens / 40));
const tokens = model.tokenize(text).slice(0, targetTokens);

console.log(
  `chunks benchmark — realistic model, ${tokens.length} tokens, ${os.availableParallelism()} threads, backend ${nfs.kind}, ` +
    `${repeats} shuffled rounds (x3 for the pure functions), medians; load average ${os.loadavg()[0]!.toFixed(1)}`,
);

try {
  const layoutRows: Array<Record<string, string | number>> = [];
  let handoff: { state: Buffer; seq: LlamaContextSequence } | null = null;

  for (const flashAttention of [true, false]) {
    const context = await createContext(model, { contextSize: CONTEXT, flashAttention });
    contexts.push(context);
    const seq = context.getSequence();
    await seq.evaluateWithoutGeneratingNewTokens(tokens);
    const statePath = path.join(dir, `state-${flashAttention ? "fa" : "nofa"}.bin`);
    await seq.saveStateToFile(statePath);
    const state = readFileSync(statePath);
    const layout = parseSeqState(state);
    const mb = state.byteLength / 1e6;
    const split = splitSeqState(state);
    const pieces = [...split.chunks, split.tail];
    const ctx = stateContext({ modelFingerprint: "bench", geometry: layout.geometry!, attentionRotation: "default", sequences: 1, chunkTokens: 256 });
    const tokenBytes = Buffer.from(Int32Array.from(tokens).buffer);

    const t = await measure(3 * repeats, {
      parse: () => parseSeqState(state),
      split: () => splitSeqState(state, { checksums: false }),
      splitChecksums: () => splitSeqState(state),
      join: () => joinSeqState({ geometry: layout.geometry, pieces }),
      joinVerified: () => joinSeqState({ geometry: layout.geometry, pieces, verifyChecksums: true }),
      joinParts: () => joinSeqStateParts({ geometry: layout.geometry, pieces }),
      ids: () => chunkChain(ctx, tokens),
      xxh64Tokens: () => xxh64(tokenBytes),
    });
    const perMb = (timing: Timing) => `${fmt(timing.cpu / mb)} (${fmt(timing.wall / mb)})`;
    layoutRows.push({
      V: layout.geometry!.vTrans ? "transposed (FA off)" : "rows (FA on)",
      MB: Number(mb.toFixed(2)),
      chunks: split.chunks.length,
      "parse ms": fmt(t.parse.cpu),
      "split ms/MB": perMb(t.split),
      "split+checksums": perMb(t.splitChecksums),
      "join (new Buffer)": perMb(t.join),
      "join+verify": perMb(t.joinVerified),
      "join parts": perMb(t.joinParts),
      "ids ms": fmt(t.ids.cpu),
      "xxh64 ms": fmt(t.xxh64Tokens.cpu),
    });
    if (flashAttention) handoff = { state, seq };
  }
  console.log("\nsplit and join, CPU ms per MB of state (wall in parentheses); 'join parts' builds views only, no copy:");
  console.log(table(layoutRows));

  // --- the engine's save and load: memfd against a regular file ---------------------------
  // flash attention on: what "auto" resolves to on CPU
  const { state, seq } = handoff!;
  const loadContext = await createContext(model, { contextSize: CONTEXT, flashAttention: true });
  contexts.push(loadContext);
  const target = loadContext.getSequence();
  const filePath = path.join(dir, "handoff.bin");
  const saveFile = nfs.createMemoryFile("kvkeep-bench-save");
  const loadFile = nfs.createMemoryFile("kvkeep-bench-load");
  if (saveFile === null || loadFile === null) {
    console.log(`\nno in-memory files on this backend (${nfs.kind}, ${process.platform}): memfd rows skipped`);
  } else {
    await seq.saveStateToFile(filePath);
    await loadFile.write(state);
    const { geometry } = parseSeqState(state);
    const split = splitSeqState(state);
    const pieces = [...split.chunks, split.tail];
    const full = split.chunks.length;
    // the chunks as files, as a chunked store would keep them (read back from the page cache)
    const pieceFiles = pieces.map((piece, i) => {
      const file = path.join(dir, `piece-${i}.kvkc`);
      writeFileSync(file, piece);
      return file;
    });
    const scratch = Buffer.allocUnsafe(state.byteLength);
    const chunkScratch = Buffer.allocUnsafe(pieces.reduce((n, p) => n + p.byteLength, 0));
    /** Each chunk file read into its slice of one reused buffer (what a native reader would do). */
    const readPiecesInto = (): Buffer[] => {
      const out: Buffer[] = [];
      let at = 0;
      for (const file of pieceFiles) {
        const fd = openSync(file, "r");
        try {
          const size = fstatSync(fd).size;
          for (let got = 0; got < size; ) got += readSync(fd, chunkScratch, at + got, size - got, got);
          out.push(chunkScratch.subarray(at, at + size));
          at += size;
        } finally {
          closeSync(fd);
        }
      }
      return out;
    };
    const t = await measure(repeats, {
      saveFile: () => seq.saveStateToFile(filePath),
      saveMemfd: () => seq.saveStateToFile(saveFile.path),
      saveReadSplit: async () => {
        await seq.saveStateToFile(saveFile.path);
        splitSeqState(await saveFile.read(scratch), { checksums: false });
      },
      saveReadSplitNew: async () => {
        await seq.saveStateToFile(saveFile.path);
        splitSeqState(await saveFile.read(scratch), { skipChunks: full - 1 });
      },
      readNew: () => saveFile.read(),
      readInto: () => saveFile.read(scratch),
      loadFile: () => target.loadStateFromFile(filePath, { acceptRisk: true }),
      loadMemfd: () => target.loadStateFromFile(loadFile.path, { acceptRisk: true }),
      write: () => loadFile.write(state),
      joinWriteLoad: async () => {
        await loadFile.write(joinSeqStateParts({ geometry, pieces }).parts);
        await target.loadStateFromFile(loadFile.path, { acceptRisk: true });
      },
      readJoinWriteLoad: async () => {
        await loadFile.write(joinSeqStateParts({ geometry, pieces: readPiecesInto() }).parts);
        await target.loadStateFromFile(loadFile.path, { acceptRisk: true });
      },
      readFileJoinWriteLoad: async () => {
        const read = await Promise.all(pieceFiles.map((file) => readFile(file)));
        await loadFile.write(joinSeqStateParts({ geometry, pieces: read }).parts);
        await target.loadStateFromFile(loadFile.path, { acceptRisk: true });
      },
      readPieces: () => readPiecesInto(),
    });
    const row = (what: string, timing: Timing, base: Timing | null) => ({
      what,
      "CPU ms": fmt(timing.cpu),
      "wall ms": fmt(timing.wall),
      "CPU × file": base === null ? "" : ratio(timing.cpu, base.cpu),
      "wall × file": base === null ? "" : ratio(timing.wall, base.wall),
    });
    console.log(`\nthe engine's save and load, ${(state.byteLength / 1e6).toFixed(2)} MB (flash attention on; file rows are page-cache writes and reads, no fsync):`);
    console.log(
      table([
        row("engine save → file on disk", t.saveFile, t.saveFile),
        row("engine save → memfd", t.saveMemfd, t.saveFile),
        row("  … read into a reused buffer, split into all chunks", t.saveReadSplit, t.saveFile),
        row("  … read, encode the last full chunk + tail (checksummed)", t.saveReadSplitNew, t.saveFile),
        row("MemoryFile.read into a new Buffer", t.readNew, null),
        row("MemoryFile.read into a reused buffer", t.readInto, null),
        row("engine load ← file on disk (page cache)", t.loadFile, t.loadFile),
        row("engine load ← memfd", t.loadMemfd, t.loadFile),
        row("MemoryFile.write of one Buffer", t.write, null),
        row("chunks in memory → join parts → memfd → engine load", t.joinWriteLoad, t.loadFile),
        row(`read ${pieces.length} chunk files (page cache) into one reused buffer`, t.readPieces, null),
        row(`  … → join parts → memfd → engine load`, t.readJoinWriteLoad, t.loadFile),
        row(`  the same with fs.promises.readFile per chunk`, t.readFileJoinWriteLoad, t.loadFile),
      ]),
    );
    saveFile.close();
    loadFile.close();
  }
} finally {
  for (const c of contexts) if (!c.disposed) await c.dispose();
  rmSync(dir, { recursive: true, force: true });
}
