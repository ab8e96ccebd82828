/**
 * Time to first token on the realistic model (512-dim, 8 layers) at ~500 and ~2000 history
 * tokens, from one run, interleaved repeats, medians:
 *   cold     — the adapter with kvCache: false (the whole prompt evaluated);
 *   resumed  — the adapter resuming a kvkeep cache: begin turn, verify, load the state,
 *              evaluate the new tokens, first token;
 *   floor    — node-llama-cpp alone on an existing context: load the same state file,
 *              evaluate the same new tokens, first token.
 * Goals (issue 6): resumed/cold ≤ 0.10 at 2000 tokens; resumed/floor ≤ 1.15.
 *   npx tsx bench/engine.ts        (BENCH_REPEATS=7 by default)
 *   BENCH_TOKENS=500,1000,2000,3000 npx tsx bench/engine.ts --chart
 *       also writes the medians to bench/results/engine-ttft.json and draws the
 *       chart of docs/benchmarks.md, docs/bench-ttft.svg (bench/chart.ts).
 */
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { createLlamaCppCompletion, fingerprintModel } from "../src/engines/node-llama-cpp/index.js";
import { openKvCacheStore } from "../src/index.js";
import { createContext, loadFixtureModel } from "../test/fixtures/engine.js";
import { prepareConversation } from "./conversation.js";
import { DEFAULT_RESULTS, DEFAULT_SVG, type TtftPoint, ttftChartSvg } from "./chart.js";
import { median, nowMs, table } from "./lib.js";

const repeats = Number(process.env.BENCH_REPEATS ?? 7);
const targets = (process.env.BENCH_TOKENS ?? "500,2000").split(",").map(Number);
const chart = process.argv.includes("--chart");
const points: TtftPoint[] = [];
const CONTEXT = 4096;
const { model, path: modelPath } = await loadFixtureModel("realistic");
const root = mkdtempSync(path.join(os.tmpdir(), "kvkeep-bench-engine-"));
const rows: Array<Record<string, string | number>> = [];

try {
  const raw = await createContext(model, { contextSize: CONTEXT });
  const sequence = raw.getSequence();
  const fingerprint = await fingerprintModel(model, raw, modelPath);
  const store = openKvCacheStore({ root, onRollback: "keep-committed" });
  const session = store.createSession("bench", { fingerprint });
  const resumedAdapter = createLlamaCppCompletion({ model, store, contextSize: CONTEXT, modelId: "bench", fingerprint });
  const coldAdapter = createLlamaCppCompletion({ model, store, contextSize: CONTEXT, modelId: "bench", fingerprint });
  console.log(`engine benchmark — realistic model, ${os.availableParallelism()} threads, backend ${store.backend}, ${repeats} repeats, medians`);

  for (const target of targets) {
    const conversation = await prepareConversation(model, sequence, target, root);
    const { history: h2, prompt: prompt2, statePath } = conversation;
    // One committed cache per repeat (same state, distinct keys) so every resumed run loads.
    for (let i = 0; i < repeats; i++) await conversation.commitAs(session, `r${target}-${i}`);

    const cold: number[] = [];
    const resumed: number[] = [];
    const floor: number[] = [];
    let resumedStats = { promptTokens: 0, reusedTokens: 0 };
    for (let i = 0; i < repeats; i++) {
      cold.push((await coldAdapter.completion({ history: h2, kvCache: false, maxTokens: 1, temperature: 0 })).stats.ttftMs);
      const r = await resumedAdapter.completion({ history: h2, kvCache: `r${target}-${i}`, maxTokens: 1, temperature: 0 });
      resumed.push(r.stats.ttftMs);
      resumedStats = r.stats;
      // The floor: the engine alone, on an existing context, with the same state and tokens.
      const start = nowMs();
      await sequence.loadStateFromFile(statePath, { acceptRisk: true });
      const { firstDifferentIndex } = sequence.compareContextTokens(prompt2);
      const keep = Math.min(firstDifferentIndex, prompt2.length - 1);
      if (sequence.nextTokenIndex > keep) await sequence.eraseContextTokenRanges([{ start: keep, end: sequence.nextTokenIndex }]);
      for await (const _token of sequence.evaluate(prompt2.slice(keep), { temperature: 0, yieldEogToken: true })) break;
      floor.push(nowMs() - start);
    }
    const [c, r, f] = [median(cold), median(resumed), median(floor)];
    points.push({ tokens: prompt2.length, coldMs: c, resumedMs: r, floorMs: f });
    rows.push({
      "history tokens": prompt2.length,
      "from cache": resumedStats.reusedTokens,
      "cold ms": c,
      "resumed ms": r,
      "floor ms": f,
      "resumed/cold": r / c,
      "resumed/floor": r / f,
    });
  }
  await resumedAdapter.dispose();
  await coldAdapter.dispose();
  await raw.dispose();
  await store.close();
  console.log(table(rows));
  console.log("goals: resumed/cold ≤ 0.10 at ~2000 tokens; resumed/floor ≤ 1.15");
  if (chart) {
    const results = {
      setup: `realistic model (512-dim, 8 layers), ${os.availableParallelism()} CPU threads, median of ${repeats}, load average ${os.loadavg()[1]!.toFixed(1)}`,
      measuredAt: new Date().toISOString().slice(0, 10),
      points,
    };
    mkdirSync(path.dirname(DEFAULT_RESULTS), { recursive: true });
    mkdirSync(path.dirname(DEFAULT_SVG), { recursive: true });
    writeFileSync(DEFAULT_RESULTS, `${JSON.stringify(results, null, 2)}\n`);
    writeFileSync(DEFAULT_SVG, ttftChartSvg(results));
    console.log(`wrote ${DEFAULT_RESULTS} and ${DEFAULT_SVG}`);
  }
} finally {
  rmSync(root, { recursive: true, force: true });
}
process.exit(0);
