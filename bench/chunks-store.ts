/**
 * Chunked storage against whole files, side by side in one run, on the node-llama-cpp adapter
 * and the realistic model (512-dim, 8 layers, F16 KV: ~8 KiB per token). Ratios only (the
 * machine is shared and noisy):
 *
 *   bytes per turn   — bytes the store wrote for one turn (new files and rewritten ones: chunks,
 *                      tail or whole state, manifest, log appends; a chunk merely touched counts
 *                      nothing) / KV bytes of the turn's new tokens, at each conversation size
 *                      (goal ≤ 2 chunked), median over the measured turns;
 *   20 chats         — disk for 20 chats sharing one ~2 000-token system prompt / disk for one
 *                      such chat (goal ≤ 2.5 chunked);
 *   resumed TTFT     — a fresh adapter (new context: the state comes from the root) resuming the
 *                      conversation, chunked / whole, medians of interleaved repeats (goal ≤ 1.05);
 *   commit per turn  — stats.saveMs (the engine's save + kvkeep's commit) of the measured turns,
 *                      chunked / whole, at the largest size (goal ≤ 0.2).
 *
 *   npx tsx bench/chunks-store.ts      (BENCH_SIZES=2000,8000  BENCH_TURNS=4  BENCH_REPEATS=5)
 *
 * BENCH_FLASH_ATTENTION=off runs the contexts with flash attention off (llama.cpp then saves V
 * transposed: a chunk's V layer is a row per element, which the load gathers as strided runs).
 */
import { mkdtempSync, readdirSync, rmSync, statSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import type { LlamaModel } from "node-llama-cpp";
import { parseSeqState } from "../src/chunks/state-format.js";
import { createLlamaCppCompletion } from "../src/engines/node-llama-cpp/index.js";
import { type CacheMessage, type KvCacheStore, openKvCacheStore } from "../src/index.js";
import { committedEntry, committedState } from "../test/helpers/committed-state.js";
import { loadFixtureModel, machineThreads } from "../test/fixtures/engine.js";
import { median, table } from "./lib.js";

const sizes = (process.env.BENCH_SIZES ?? "2000,8000").split(",").map(Number);
const turns = Number(process.env.BENCH_TURNS ?? 4);
const repeats = Number(process.env.BENCH_REPEATS ?? 5);
const flashAttentionOff = process.env.BENCH_FLASH_ATTENTION === "off";
const REPLY = 24;
const variants = ["chunked", "whole"] as const;
type Variant = (typeof variants)[number];

const dirs: string[] = [];
function tempRoot(): string {
  const dir = mkdtempSync(path.join(os.tmpdir(), "kvkeep-bench-chunks-"));
  dirs.push(dir);
  return dir;
}

interface FileMark {
  ino: bigint;
  size: number;
  mtimeNs: bigint;
}

function snapshot(root: string): Map<string, FileMark> {
  const out = new Map<string, FileMark>();
  const walk = (dir: string): void => {
    for (const e of readdirSync(dir, { withFileTypes: true })) {
      const p = path.join(dir, e.name);
      if (e.isDirectory()) walk(p);
      else if (e.isFile()) {
        const st = statSync(p, { bigint: true });
        out.set(p, { ino: st.ino, size: Number(st.size), mtimeNs: st.mtimeNs });
      }
    }
  };
  walk(root);
  return out;
}

/** Bytes written between two snapshots: new files whole, appended logs by their growth; a touched chunk counts nothing. */
function bytesWritten(before: Map<string, FileMark>, after: Map<string, FileMark>): number {
  let bytes = 0;
  for (const [p, mark] of after) {
    const was = before.get(p);
    if (!was || was.ino !== mark.ino) bytes += mark.size;
    else if (was.mtimeNs !== mark.mtimeNs && !p.endsWith(".kvkc")) bytes += Math.max(0, mark.size - was.size);
  }
  return bytes;
}

function diskBytes(root: string): number {
  let bytes = 0;
  for (const mark of snapshot(root).values()) bytes += mark.size;
  return bytes;
}

function systemPrompt(tokens: number, salt = ""): CacheMessage {
  // Byte-level vocabulary: about one token per character.
  return { role: "system", content: `${salt}Policy: ${"be helpful, exact and brief. ".repeat(Math.ceil(tokens / 29))}`.slice(0, tokens) };
}

function adapterOn(model: LlamaModel, store: KvCacheStore, variant: Variant, contextSize: number) {
  return createLlamaCppCompletion({
    model,
    store,
    contextSize,
    threads: machineThreads(),
    chunkedStates: variant === "chunked",
    ...(flashAttentionOff ? { contextOptions: { flashAttention: false } } : {}),
  });
}

const { model } = await loadFixtureModel("realistic");
let kvPerToken = 0;
const rows: Array<Record<string, string | number>> = [];
const ratios: Array<Record<string, string | number>> = [];

for (const size of sizes) {
  const contextSize = Math.max(4096, Math.ceil((size + 1500) / 256) * 256);
  const system = systemPrompt(size);
  const perVariant = {} as Record<Variant, { ratio: number[]; saveMs: number[]; commitMs: number[]; layout: string; history: CacheMessage[]; store: KvCacheStore }>;
  for (const variant of variants) {
    const root = tempRoot();
    const store = openKvCacheStore({ root });
    const adapter = adapterOn(model, store, variant, contextSize);
    let history: CacheMessage[] = [system, { role: "user", content: "Summarise the policy in one line." }];
    let result = await adapter.completion({ history, kvCache: "conv", maxTokens: REPLY, temperature: 0 });
    const ratio: number[] = [];
    const saveMs: number[] = [];
    const commitMs: number[] = [];
    for (let t = 0; t < turns; t++) {
      history = [...history, { role: "assistant", content: result.text }, { role: "user", content: `Now the case number ${t + 1}: a customer returns an opened item after ${t + 20} days. What applies, and why?` }];
      const before = snapshot(root);
      const tokensBefore = result.stats.promptTokens + result.stats.completionTokens;
      result = await adapter.completion({ history, kvCache: "conv", maxTokens: REPLY, temperature: 0 });
      const after = snapshot(root);
      const newTokens = result.stats.promptTokens + result.stats.completionTokens - tokensBefore;
      if (kvPerToken === 0) {
        const bin = [...after.keys()].find((p) => p.endsWith(".bin"))!;
        kvPerToken = parseSeqState(await committedState(bin, root)).geometry!.kvBytesPerToken;
      }
      ratio.push(bytesWritten(before, after) / (newTokens * kvPerToken));
      saveMs.push(result.stats.saveMs);
      commitMs.push(result.stats.commitMs);
    }
    await adapter.dispose();
    const bin = [...snapshot(root).keys()].find((p) => p.endsWith(".bin"))!;
    const entry = await committedEntry(bin);
    perVariant[variant] = { ratio, saveMs, commitMs, layout: result.stats.layout ?? "none", history: [...history, { role: "assistant", content: result.text }, { role: "user", content: "Thanks. Anything else?" }], store };
    rows.push({
      size,
      variant,
      layout: result.stats.layout ?? "none",
      tokens: entry.chunks?.tokens ?? entry.tokenCount ?? 0,
      "bytes/turn ÷ new KV": median(ratio),
      "save+commit ms": median(saveMs),
      "commit ms": median(commitMs),
    });
  }

  // Resumed TTFT: a fresh adapter per repeat, variants interleaved; the same prompt each time
  // (one reply token, so every repeat resumes the same state and evaluates the same tokens).
  const ttft: Record<Variant, number[]> = { chunked: [], whole: [] };
  const loadMs: Record<Variant, number[]> = { chunked: [], whole: [] };
  const reused: Record<Variant, number[]> = { chunked: [], whole: [] };
  for (let r = 0; r <= repeats; r++) {
    for (const variant of r % 2 ? [...variants].reverse() : variants) {
      const { store, history } = perVariant[variant];
      const adapter = adapterOn(model, store, variant, contextSize);
      const result = await adapter.completion({ history, kvCache: "conv", maxTokens: 1, temperature: 0 });
      await adapter.dispose();
      if (result.stats.source !== "own") throw new Error(`${variant} did not resume its own cache: ${JSON.stringify(result.stats)}`);
      if (r > 0) {
        // the first round warms up
        ttft[variant].push(result.stats.ttftMs);
        loadMs[variant].push(result.stats.loadMs);
        reused[variant].push(result.stats.reusedTokens);
      }
    }
  }
  const c = perVariant.chunked;
  const w = perVariant.whole;
  ratios.push({
    size,
    "chunked bytes/turn ÷ new KV (≤ 2)": median(c.ratio),
    "whole bytes/turn ÷ new KV": median(w.ratio),
    "resumed TTFT chunked/whole (≤ 1.05)": median(ttft.chunked) / median(ttft.whole),
    "TTFT ms chunked | whole": `${median(ttft.chunked).toFixed(1)} | ${median(ttft.whole).toFixed(1)}`,
    "load ms chunked | whole": `${median(loadMs.chunked).toFixed(1)} | ${median(loadMs.whole).toFixed(1)}`,
    "reused tokens chunked | whole": `${median(reused.chunked)} | ${median(reused.whole)}`,
    "save+commit chunked/whole (≤ 0.2)": median(c.saveMs) / median(w.saveMs),
  });
  for (const v of variants) await perVariant[v].store.close();
}

// 20 chats sharing a ~2 000-token system prompt, against one such chat.
const shared = systemPrompt(2000);
const disk: Record<Variant, { one: number; twenty: number }> = { chunked: { one: 0, twenty: 0 }, whole: { one: 0, twenty: 0 } };
for (const variant of variants) {
  for (const chats of [1, 20]) {
    const root = tempRoot();
    const store = openKvCacheStore({ root });
    const adapter = adapterOn(model, store, variant, 4096);
    for (let i = 0; i < chats; i++) {
      await adapter.completion({ history: [shared, { role: "user", content: `Question ${i}: may I return item ${i * 7}?` }], kvCache: `chat-${i}`, maxTokens: 8, temperature: 0 });
    }
    await adapter.dispose();
    await store.close();
    disk[variant][chats === 1 ? "one" : "twenty"] = diskBytes(root);
  }
}

console.log(`realistic model, ${kvPerToken} KV bytes per token, flash attention ${flashAttentionOff ? "off (V transposed)" : "auto (on: V rows)"}; ${turns} measured turns per size, ${repeats} TTFT repeats\n`);
console.log(table(rows));
console.log("");
console.log(table(ratios));
console.log("");
console.log(
  table(variants.map((v) => ({ variant: v, "one chat MB": disk[v].one / 1e6, "20 chats MB": disk[v].twenty / 1e6, "20 chats ÷ one (chunked ≤ 2.5)": disk[v].twenty / disk[v].one }))),
);
for (const dir of dirs) rmSync(dir, { recursive: true, force: true });
