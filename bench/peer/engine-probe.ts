/**
 * node-llama-cpp alone (no kvkeep, no state load), in its own process so each run loads the
 * binary it asks for (two llama.cpp builds cannot share one process): evaluate `tokens` cold,
 * then, `repeats` times, `extra` more tokens on top (erased again after each), and print the
 * timings as one JSON line. Run by bench/peer/long-context.ts:
 *   node --import tsx bench/peer/engine-probe.ts '{"build":"native","tokens":8000,"extra":[35,64],...}'
 */
import { getLlama, LlamaLogLevel } from "node-llama-cpp";
import { cpuFeatures, llamaBuildOptions } from "../../src/engines/node-llama-cpp/llama-build.js";
import { median, nowMs } from "../lib.js";

export interface EngineProbeRequest {
  modelPath: string;
  /** `native`: node-llama-cpp's local build; `prebuilt`: its generic binary. */
  build: "native" | "prebuilt";
  /** Extra cmake options of the local build to load (a variant built with them, e.g. GGML_OPENMP=OFF). */
  cmakeOptions?: Record<string, string>;
  threads: number;
  contextSize: number;
  tokens: number;
  /** Batch sizes to time on top of the cold prompt. */
  extra: number[];
  repeats: number;
  flashAttention?: boolean | "auto";
  batchSize?: number;
  kvType?: string;
}

export interface EngineProbeResult {
  buildType: string;
  features: string[];
  flashAttention: unknown;
  coldMs: number;
  coldMsPerToken: number;
  /** Median milliseconds to evaluate each `extra` batch at `tokens` of context. */
  extraMs: Record<string, number>;
}

const request = JSON.parse(process.argv[2]!) as EngineProbeRequest;
const llama = await getLlama({
  ...llamaBuildOptions(request.build === "native" ? "auto" : "prebuilt"),
  ...(request.cmakeOptions ? { cmakeOptions: request.cmakeOptions } : {}),
  gpu: false,
  progressLogs: false,
  maxThreads: request.threads,
  logLevel: LlamaLogLevel.error,
});
if ((llama.buildType === "localBuild") !== (request.build === "native")) {
  throw new Error(`asked for the ${request.build} binary, node-llama-cpp loaded its ${llama.buildType}`);
}
const model = await llama.loadModel({ modelPath: request.modelPath });
const context = await model.createContext({
  contextSize: request.contextSize,
  threads: request.threads,
  sequences: 1,
  ...(request.flashAttention !== undefined ? { flashAttention: request.flashAttention } : {}),
  ...(request.batchSize !== undefined ? { batchSize: request.batchSize } : {}),
  ...(request.kvType !== undefined ? { experimentalKvCacheKeyType: request.kvType, experimentalKvCacheValueType: request.kvType } : {}),
} as Parameters<typeof model.createContext>[0]);
const sequence = context.getSequence();
// Byte-level vocabulary: one token per character.
const text = (n: number, seed: number): string => Array.from({ length: n }, (_, i) => String.fromCharCode(97 + ((i * 7 + seed) % 26))).join("");
const prompt = model.tokenize(text(request.tokens, 0)).slice(0, request.tokens);
let start = nowMs();
await sequence.evaluateWithoutGeneratingNewTokens(prompt);
const coldMs = nowMs() - start;
const extraMs: Record<string, number> = {};
for (const n of request.extra) {
  const times: number[] = [];
  for (let r = 0; r < request.repeats; r++) {
    const more = model.tokenize(text(n, r + 1)).slice(0, n);
    start = nowMs();
    await sequence.evaluateWithoutGeneratingNewTokens(more);
    times.push(nowMs() - start);
    await sequence.eraseContextTokenRanges([{ start: prompt.length, end: sequence.nextTokenIndex }]);
  }
  extraMs[n] = median(times);
}
const result: EngineProbeResult = {
  buildType: llama.buildType,
  features: cpuFeatures(llama.systemInfo),
  flashAttention: context.flashAttention,
  coldMs,
  coldMsPerToken: coldMs / prompt.length,
  extraMs,
};
process.stdout.write(`${JSON.stringify(result)}\n`);
await llama.dispose();
