/**
 * `kvkeep serve` against the same server with caching off (`--no-cache`), side by side:
 * N conversations × M turns driven by the official `openai` client (streaming), requests
 * alternating between the two servers so machine noise hits both alike; time to first
 * token (client-side: request sent → first text chunk) p50/p95 per turn index, then both
 * servers restarted and one more turn each ("after restart").
 * Goal (issue 14): at turn 5 of ~2 000-token conversations, p50 TTFT ≤ 0.15× cache-off.
 *
 *   npx tsx bench/serve.ts [--svg bench/serve-ttft.svg]
 *   BENCH_CONVERSATIONS=4 BENCH_TURNS=5 BENCH_SHAPE=realistic (the 512-dim, 8-layer model)
 *   BENCH_THREADS=N (default: the server's, all cores)
 */
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { parseArgs } from "node:util";
import type OpenAI from "openai";
import { ensureModel, type ModelShapeName, resolveShape } from "../test/fixtures/gguf/models.js";
import { openaiClient, type ServeProcess, servedModel, startServe } from "../test/server/helpers.js";
import { median, nowMs, table } from "./lib.js";

type Message = OpenAI.ChatCompletionMessageParam;

const { values: flags } = parseArgs({ options: { svg: { type: "string" } }, strict: true });
const conversations = Number(process.env.BENCH_CONVERSATIONS ?? 4);
const turns = Number(process.env.BENCH_TURNS ?? 5);
const shape = (process.env.BENCH_SHAPE ?? "realistic") as ModelShapeName;
const REPLY_TOKENS = 32;
// Byte-level vocab: one token per character. A ~1 200-token system prompt, ~120-character
// questions and 32-token replies: turn 5's prompt is ~2 100 tokens. Each turn still evaluates
// its new question (~140 tokens with the chat template), which bounds the ratio from below.
const SYSTEM_CHARS = 1200;
const USER_CHARS = 120;

function percentile(values: number[], p: number): number {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.ceil((p / 100) * sorted.length) - 1)]!;
}

function filler(seed: string, chars: number): string {
  const words = ["policy", "river", "ledger", "orbit", "harbor", "signal", "meadow", "copper", "lantern", "quarry"];
  let text = `${seed}: `;
  for (let i = 0; text.length < chars; i++) text += `${words[(i * 7 + seed.length) % words.length]} `;
  return text.slice(0, chars);
}

interface Sample {
  ttftMs: number;
  promptTokens: number;
  cachedTokens: number;
}

/** One streamed turn: TTFT measured at the client, usage from the last chunk. */
async function streamTurn(client: OpenAI, model: string, messages: Message[]): Promise<{ reply: string; sample: Sample }> {
  const start = nowMs();
  const stream = await client.chat.completions.create({
    model,
    messages,
    max_tokens: REPLY_TOKENS,
    temperature: 0,
    stream: true,
    stream_options: { include_usage: true },
  });
  let ttftMs = Number.NaN;
  let reply = "";
  let usage: OpenAI.CompletionUsage | null | undefined;
  for await (const chunk of stream) {
    const piece = chunk.choices[0]?.delta.content ?? "";
    if (piece && Number.isNaN(ttftMs)) ttftMs = nowMs() - start;
    reply += piece;
    usage = chunk.usage ?? usage;
  }
  return { reply, sample: { ttftMs, promptTokens: usage!.prompt_tokens, cachedTokens: usage!.prompt_tokens_details?.cached_tokens ?? 0 } };
}

/** A chart of p50 TTFT per turn, two bars per turn (plain SVG, no dependencies). */
function barChartSvg(title: string, categories: string[], series: Array<{ name: string; color: string; values: number[] }>): string {
  const width = 640;
  const height = 320;
  const left = 72;
  const bottom = 40;
  const top = 56;
  const plotW = width - left - 16;
  const plotH = height - top - bottom;
  const max = Math.max(...series.flatMap((s) => s.values));
  const step = 10 ** Math.floor(Math.log10(max));
  const yMax = Math.ceil(max / step) * step;
  const groupW = plotW / categories.length;
  const barW = (groupW * 0.7) / series.length;
  const y = (v: number): number => top + plotH - (v / yMax) * plotH;
  const parts = [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" font-family="sans-serif" font-size="12">`,
    `<rect width="${width}" height="${height}" fill="white"/>`,
    `<text x="${width / 2}" y="20" text-anchor="middle" font-size="14">${title}</text>`,
  ];
  for (let i = 0; i <= 4; i++) {
    const v = (yMax * i) / 4;
    parts.push(`<line x1="${left}" x2="${width - 16}" y1="${y(v)}" y2="${y(v)}" stroke="#ddd"/>`);
    parts.push(`<text x="${left - 6}" y="${y(v) + 4}" text-anchor="end">${Math.round(v)}</text>`);
  }
  parts.push(`<text x="14" y="${top + plotH / 2}" transform="rotate(-90 14 ${top + plotH / 2})" text-anchor="middle">p50 TTFT (ms)</text>`);
  categories.forEach((category, c) => {
    series.forEach((s, i) => {
      const x = left + c * groupW + groupW * 0.15 + i * barW;
      parts.push(`<rect x="${x.toFixed(1)}" y="${y(s.values[c]!).toFixed(1)}" width="${(barW - 2).toFixed(1)}" height="${(top + plotH - y(s.values[c]!)).toFixed(1)}" fill="${s.color}"/>`);
    });
    parts.push(`<text x="${left + c * groupW + groupW / 2}" y="${height - bottom + 16}" text-anchor="middle">${category}</text>`);
  });
  series.forEach((s, i) => {
    parts.push(`<rect x="${left + 10 + i * 170}" y="${top - 26}" width="10" height="10" fill="${s.color}"/>`);
    parts.push(`<text x="${left + 24 + i * 170}" y="${top - 17}">${s.name}</text>`);
  });
  parts.push("</svg>");
  return `${parts.join("\n")}\n`;
}

const modelPath = await ensureModel(resolveShape(shape));
const roots = { kvkeep: mkdtempSync(path.join(os.tmpdir(), "kvkeep-bench-serve-")), off: mkdtempSync(path.join(os.tmpdir(), "kvkeep-bench-serve-off-")) };
const variants = ["kvkeep", "off"] as const;
type Variant = (typeof variants)[number];
const servers: Partial<Record<Variant, ServeProcess>> = {};

async function startBoth(): Promise<void> {
  const threads = process.env.BENCH_THREADS ? ["--threads", process.env.BENCH_THREADS] : [];
  const common = ["--model", modelPath, "--parallel", "1", "--ctx", "4096", ...threads];
  servers.kvkeep = await startServe([...common, "--root", roots.kvkeep]);
  servers.off = await startServe([...common, "--root", roots.off, "--no-cache"]);
}

try {
  await startBoth();
  const model = await servedModel(openaiClient(servers.kvkeep!));
  console.log(
    `serve benchmark — ${shape} model, ${conversations} conversations × ${turns} turns (+1 after a restart), ${REPLY_TOKENS}-token replies, ` +
      `${os.availableParallelism()} cores, --parallel 1, TTFT at the client`,
  );
  const histories: Record<Variant, Message[][]> = {
    kvkeep: Array.from({ length: conversations }, (_, c) => [{ role: "system", content: filler(`Conversation ${c} rules`, SYSTEM_CHARS) }]),
    off: Array.from({ length: conversations }, (_, c) => [{ role: "system", content: filler(`Conversation ${c} rules`, SYSTEM_CHARS) }]),
  };
  const samples: Record<Variant, Sample[][]> = { kvkeep: [], off: [] };

  const runTurn = async (t: number): Promise<void> => {
    for (const variant of variants) samples[variant][t] = [];
    // Round-robin over the conversations, alternating servers: each turn loads another
    // conversation's state than the one the engine just ran.
    for (let c = 0; c < conversations; c++) {
      for (const variant of variants) {
        const history = histories[variant][c]!;
        history.push({ role: "user", content: filler(`Turn ${t + 1} question ${c}`, USER_CHARS) });
        const { reply, sample } = await streamTurn(openaiClient(servers[variant]!), model, history);
        history.push({ role: "assistant", content: reply });
        samples[variant][t]!.push(sample);
      }
    }
    const p50 = (v: Variant) => median(samples[v][t]!.map((s) => s.ttftMs)).toFixed(0);
    process.stderr.write(`turn ${t + 1}: p50 TTFT kvkeep ${p50("kvkeep")} ms, off ${p50("off")} ms\n`);
  };

  for (let t = 0; t < turns; t++) await runTurn(t);
  await Promise.all(variants.map((v) => servers[v]!.stop()));
  await startBoth();
  await runTurn(turns);

  const rows: Array<Record<string, string | number>> = [];
  const labels: string[] = [];
  for (let t = 0; t <= turns; t++) {
    const label = t < turns ? String(t + 1) : `${turns + 1} (restart)`;
    labels.push(t < turns ? String(t + 1) : `${turns + 1}*`);
    const ttft = (v: Variant) => samples[v][t]!.map((s) => s.ttftMs);
    const k = ttft("kvkeep");
    const o = ttft("off");
    rows.push({
      turn: label,
      "prompt tokens": Math.round(median(samples.kvkeep[t]!.map((s) => s.promptTokens))),
      "cached (kvkeep)": Math.round(median(samples.kvkeep[t]!.map((s) => s.cachedTokens))),
      "kvkeep p50 ms": median(k),
      "kvkeep p95 ms": percentile(k, 95),
      "off p50 ms": median(o),
      "off p95 ms": percentile(o, 95),
      "p50 kvkeep/off": median(k) / median(o),
    });
  }
  console.log(table(rows));
  const atGoal = rows[Math.min(4, turns - 1)]!;
  console.log(
    `\nturn ${atGoal.turn}: p50 TTFT kvkeep/off = ${(atGoal["p50 kvkeep/off"] as number).toFixed(3)} (goal ≤ 0.15); ` +
      `after a restart: ${(rows.at(-1)!["p50 kvkeep/off"] as number).toFixed(3)}`,
  );

  if (flags.svg) {
    const svg = barChartSvg(`p50 time to first token per turn (${shape} model; * = after a restart)`, labels, [
      { name: "kvkeep serve", color: "#2b7bb9", values: rows.map((r) => r["kvkeep p50 ms"] as number) },
      { name: "cache off (--no-cache)", color: "#c0504d", values: rows.map((r) => r["off p50 ms"] as number) },
    ]);
    writeFileSync(flags.svg, svg);
    console.log(`chart written to ${flags.svg}`);
  }
} finally {
  await Promise.all(variants.map((v) => servers[v]?.stop()));
  for (const root of Object.values(roots)) rmSync(root, { recursive: true, force: true });
}
