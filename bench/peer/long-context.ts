/**
 * Long contexts: with ~8 000 tokens in the context, how long do a few dozen new tokens take
 * (what a resumed turn evaluates) — node-llama-cpp alone (prebuilt and native builds) against
 * llama-server's native build, and which settings change it: flash attention, KV cache type,
 * batch size, threads, the CPU build. Each configuration runs in its own process.
 */
import { execFile } from "node:child_process";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";
import { median, nowMs } from "../lib.js";
import type { EngineProbeRequest, EngineProbeResult } from "./engine-probe.js";
import { startLlamaServer } from "./llama-server.js";

const here = path.dirname(fileURLToPath(import.meta.url));

export interface LongContextOptions {
  readonly modelPath: string;
  readonly llamaServer: string | null;
  readonly threads: number;
  readonly tokens: number;
  readonly extra: readonly number[];
  readonly repeats: number;
  /** node-llama-cpp has a local build (the native rows need one). */
  readonly nativeBuild: boolean;
  /** Extra local builds to try, by their cmake options (each built with `NODE_LLAMA_CPP_CMAKE_OPTION_*`). */
  readonly variants: ReadonlyArray<{ label: string; cmakeOptions: Record<string, string> }>;
  /** Only the rows that answer "which engine, and does flash attention matter": each engine's defaults and flash attention off. */
  readonly core?: boolean;
  readonly log: (text: string) => void;
}

export interface LongContextRow {
  engine: string;
  settings: string;
  coldMsPerToken: number;
  extraMs: Record<string, number>;
}

async function probeNodeLlamaCpp(request: EngineProbeRequest): Promise<EngineProbeResult> {
  const { stdout } = await promisify(execFile)(process.execPath, ["--import", "tsx", path.join(here, "engine-probe.ts"), JSON.stringify(request)], {
    maxBuffer: 1 << 20,
    timeout: 30 * 60_000,
  });
  return JSON.parse(stdout.trim().split("\n").at(-1)!) as EngineProbeResult;
}

/** llama-server: the prompt cold, then each extra batch on top (a new suffix each time, so only it is evaluated). */
async function probeLlamaServer(binary: string, options: LongContextOptions, args: string[]): Promise<{ coldMsPerToken: number; extraMs: Record<string, number> }> {
  const contextSize = options.tokens + Math.max(...options.extra) + 256;
  const server = await startLlamaServer(binary, [
    "-m", options.modelPath, "-c", String(contextSize), "-t", String(options.threads), "-np", "1",
    // The generated model says it was trained on 4 096 tokens; llama-server caps a slot there.
    "--override-kv", `llama.context_length=int:${contextSize}`, ...args,
  ]);
  try {
    const complete = async (prompt: number[]): Promise<{ prompt_n: number; prompt_ms: number }> => {
      const response = await fetch(`${server.url}/completion`, {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify({ prompt, n_predict: 1, cache_prompt: true, temperature: 0 }),
      });
      const body = (await response.json()) as { timings?: { prompt_n: number; prompt_ms: number } };
      if (!body.timings) throw new Error(`llama-server /completion: ${JSON.stringify(body).slice(0, 500)}`);
      return body.timings;
    };
    const bytes = (n: number, seed: number): number[] => Array.from({ length: n }, (_, i) => 97 + ((i * 7 + seed) % 26));
    const base = bytes(options.tokens, 0);
    const cold = await complete(base);
    const extraMs: Record<string, number> = {};
    let seed = 1;
    for (const n of options.extra) {
      const times: number[] = [];
      for (let r = 0; r < options.repeats; r++) {
        // A suffix starting with another token than the last one: the slot keeps exactly `base`.
        const timings = await complete([...base, ...bytes(n, seed++)]);
        if (timings.prompt_n !== n) throw new Error(`llama-server evaluated ${timings.prompt_n} tokens, expected ${n}`);
        times.push(timings.prompt_ms);
      }
      extraMs[n] = median(times);
    }
    return { coldMsPerToken: cold.prompt_ms / cold.prompt_n, extraMs };
  } finally {
    await server.kill();
  }
}

/** A row's figures in one line, logged as each probe ends (a run stopped early keeps them). */
function describe(result: { coldMsPerToken: number; extraMs: Record<string, number> }): string {
  const extra = Object.entries(result.extraMs).map(([n, ms]) => `+${n} ${ms.toFixed(0)} ms`);
  return `cold ${result.coldMsPerToken.toFixed(2)} ms/token, ${extra.join(", ")}`;
}

export async function runLongContext(options: LongContextOptions): Promise<LongContextRow[]> {
  const rows: LongContextRow[] = [];
  const contextSize = options.tokens + Math.max(...options.extra) + 256;
  const base: Omit<EngineProbeRequest, "build"> = {
    modelPath: options.modelPath,
    threads: options.threads,
    contextSize,
    tokens: options.tokens,
    extra: [...options.extra],
    repeats: options.repeats,
  };
  const nlc: Array<{ settings: string; request: EngineProbeRequest }> = [
    { settings: "prebuilt, defaults (flash attention auto)", request: { ...base, build: "prebuilt" } },
  ];
  if (options.nativeBuild && options.core) {
    nlc.push(
      { settings: "native, defaults (flash attention auto)", request: { ...base, build: "native" } },
      { settings: "native, flash attention off", request: { ...base, build: "native", flashAttention: false } },
    );
  } else if (options.nativeBuild) {
    nlc.push(
      { settings: "native, defaults (flash attention auto)", request: { ...base, build: "native" } },
      { settings: "native, flash attention off", request: { ...base, build: "native", flashAttention: false } },
      { settings: "native, KV cache q8_0", request: { ...base, build: "native", kvType: "Q8_0" } },
      { settings: "native, batch 2048", request: { ...base, build: "native", batchSize: 2048 } },
      { settings: "native, 1 thread", request: { ...base, build: "native", threads: 1 } },
    );
    for (const variant of options.variants) {
      nlc.push({ settings: `native ${variant.label}, defaults`, request: { ...base, build: "native", cmakeOptions: variant.cmakeOptions } });
    }
  }
  for (const { settings, request } of nlc) {
    const started = nowMs();
    try {
      const result = await probeNodeLlamaCpp(request);
      rows.push({ engine: "node-llama-cpp", settings, coldMsPerToken: result.coldMsPerToken, extraMs: result.extraMs });
      options.log(`long context: node-llama-cpp ${settings}: ${describe(result)} (${((nowMs() - started) / 1000).toFixed(0)} s)`);
    } catch (error) {
      options.log(`long context: node-llama-cpp ${settings} failed: ${(error as Error).message.slice(0, 300)}`);
    }
  }
  if (options.llamaServer) {
    const ls: Array<{ settings: string; args: string[] }> = [
      { settings: "native, defaults (-fa auto)", args: [] },
      { settings: "native, -fa off", args: ["-fa", "off"] },
      { settings: "native, -ctk q8_0 -ctv q8_0", args: ["-ctk", "q8_0", "-ctv", "q8_0"] },
      { settings: "native, -t 1", args: ["-t", "1"] },
    ];
    for (const { settings, args } of options.core ? ls.slice(0, 2) : ls) {
      const started = nowMs();
      const result = await probeLlamaServer(options.llamaServer, options, args);
      rows.push({ engine: "llama-server", settings, ...result });
      options.log(`long context: llama-server ${settings}: ${describe(result)} (${((nowMs() - started) / 1000).toFixed(0)} s)`);
    }
  }
  return rows;
}
