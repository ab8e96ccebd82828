/**
 * kvkeep/qvac on the QVAC addon under Bare, realistic model (512-dim, 8 layers, generated),
 * ~500 and ~2000 prompt tokens, medians of interleaved repeats from one run:
 *   cold     — kvCache: false, the whole prompt evaluated;
 *   resumed  — kvkeep/qvac resuming a committed cache: lock + verify, copy the committed state
 *              to the turn's own key, the addon loads it and evaluates the new message;
 *   floor    — the addon alone on a state file passed in place (QVAC's own module), no copy;
 *   copy     — the copy inside `resumed` (stats.loadMs): what not letting the addon write the
 *              committed file in place costs.
 *   npx tsx bench/qvac.ts        (BENCH_REPEATS=5 by default)
 */
import { mkdtempSync, rmSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { ensureModel } from "../test/fixtures/gguf/models.js";
import { newestBare } from "../test/bare/helpers.js";
import { median } from "./lib.js";

const repeats = Number(process.env.BENCH_REPEATS ?? 5);
// eogBias 4: replies end after a few tokens, so QVAC's commit rule commits the first turns.
const model = await ensureModel("realistic", undefined, { eogBias: 4 });
const root = mkdtempSync(path.join(os.tmpdir(), "kvkeep-bench-qvac-"));
try {
  const { status, lines, stderr } = await newestBare().runBare("bench-qvac-worker.mjs", { model, root, targets: [500, 2000], repeats }, { timeoutMs: 30 * 60_000 });
  if (status !== 0) throw new Error(`bare exited ${status}: ${stderr}`);
  console.log(`kvkeep/qvac benchmark — @qvac/llm-llamacpp 0.53.0 under Bare, realistic model, ${repeats} repeats, medians`);
  for (const target of [500, 2000]) {
    const rows = lines.filter((l) => l.target === target) as Array<Record<string, number>>;
    if (rows.length === 0) throw new Error(`no measurements for ${target}`);
    const m = (k: string): number => median(rows.map((r) => r[k]!));
    const [cold, resumed, floor, copy] = [m("coldTtft"), m("resumedTtft"), m("floorTtft"), m("copyMs")];
    console.log(
      `  ~${target} chars: prompt ${rows[0]!.promptTokens} tokens (${rows[0]!.reusedTokens} from cache), state ${(rows[0]!.stateBytes! / 2 ** 20).toFixed(1)} MiB\n` +
        `    time to first token: cold ${cold.toFixed(1)} ms, resumed ${resumed.toFixed(1)} ms, floor ${floor.toFixed(1)} ms; copy ${copy.toFixed(2)} ms\n` +
        `    resumed/cold ${(resumed / cold).toFixed(3)}   resumed/floor ${(resumed / floor).toFixed(2)}   copy/resumed ${(copy / resumed).toFixed(3)}`,
    );
  }
} finally {
  rmSync(root, { recursive: true, force: true });
}
