/**
 * kvkeep serve against llama.cpp's own llama-server, built natively from the llama.cpp source
 * node-llama-cpp ships (the same commit its binaries are built from), on the generated
 * 512-dim 8-layer model, with the same settings: 2 threads, context 4096, one sequence,
 * greedy, 32-token replies, the official `openai` client streaming, the servers interleaved
 * request by request. Prints, from one run, the issue's table: time to first token of
 * kvkeep serve over llama-server's — with its defaults (RAM prompt cache), and with a client
 * that saves and restores slot files — for each scenario; kvkeep runs both with a native
 * node-llama-cpp build when there is one, else the prebuilt binary (both with --prebuilt). Medians: each round
 * gives a ratio of medians, the table the median of the rounds' ratios. Then time to ready,
 * memory and, with --long, a long-context probe. Never part of `npm test`.
 *
 *   npx tsx bench/peer.ts [--llama-server PATH] [--build] [--rounds 3] [--quick] [--prebuilt] [--long | --long-core] [--regenerate] [--ready] [--no-table] [--from-json FILE] [--json FILE]
 *
 *   --llama-server PATH   an existing llama-server (also $KVKEEP_LLAMA_SERVER); default
 *                         $KVKEEP_PEER_DIR/llama.cpp/build/bin/llama-server (<tmp>/kvkeep-peer),
 *                         built there from node_modules/node-llama-cpp/llama/gitRelease.bundle
 *                         when missing (20-40 minutes on 2 cores; offline)
 *   --build               build it there even if one exists
 *   --quick               one round, fewer conversations (a smoke run while developing)
 *   --prebuilt            also kvkeep on node-llama-cpp's prebuilt binary when a native build runs
 *                         (a fifth server in the interleaving: a run takes a quarter longer)
 *   --long                also the long-context probe (~8 000 tokens; 10-40 minutes: every build and setting)
 *   --long-core           the long-context probe's core rows only (each engine's defaults and flash attention off)
 *   --regenerate          also what a regenerate and a new chat cost kvkeep, part by part (bench/peer/anatomy.ts)
 *   --ready               also where kvkeep serve's time to ready goes, step by step (bench/peer/ready-probe.ts)
 *   --no-table            only the probes
 *   --from-json FILE      print the table from a saved run's rounds (a run stopped early keeps those it finished)
 *   --json FILE           write every figure as JSON too
 * node-llama-cpp's native build is its local build (`npx --no node-llama-cpp source download
 * --gpu false`); without one the kvkeep rows are the prebuilt binary's only.
 */
import { existsSync, readFileSync, writeFileSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { parseArgs } from "node:util";
import { ensureModel, resolveShape } from "../test/fixtures/gguf/models.js";
import { median, table } from "./lib.js";
import { buildLlamaServer, checkoutCommit, defaultLlamaServerPath } from "./peer/llama-server.js";
import { type LongContextRow, runLongContext } from "./peer/long-context.js";
import { type RegenerateAnatomy, regenerateAnatomy } from "./peer/anatomy.js";
import { type ReadyParts, readyAnatomy } from "./peer/ready.js";
import { type RoundResult, runRound, SCENARIOS, type ScenarioName } from "./peer/scenarios.js";
import { kvkeepTarget, llamaServerTarget, type PeerSettings, REPLY_TOKENS, type Target } from "./peer/targets.js";

const { values: flags } = parseArgs({
  options: {
    "llama-server": { type: "string" },
    build: { type: "boolean" },
    rounds: { type: "string" },
    quick: { type: "boolean" },
    long: { type: "boolean" },
    "long-core": { type: "boolean" },
    regenerate: { type: "boolean" },
    ready: { type: "boolean" },
    prebuilt: { type: "boolean" },
    "no-table": { type: "boolean" },
    "from-json": { type: "string" },
    json: { type: "string" },
  },
  strict: true,
});
const log = (text: string): void => void process.stderr.write(`${text}\n`);
const repoRoot = path.dirname(path.dirname(fileURLToPath(import.meta.url)));

// llama-server: given, found, or built from the bundle.
let llamaServer = flags["llama-server"] ?? process.env.KVKEEP_LLAMA_SERVER ?? defaultLlamaServerPath();
if (flags.build || !existsSync(llamaServer)) {
  if (flags["llama-server"] && !flags.build) throw new Error(`--llama-server ${llamaServer}: no such file (pass --build to build one)`);
  llamaServer = buildLlamaServer();
}
// node-llama-cpp's local build (the default folder of a CPU build with no custom cmake options).
const localBuild = path.join(repoRoot, "node_modules/node-llama-cpp/llama/localBuilds", `${os.platform()}-${process.arch}`, "buildDone.status");
const nativeBuild = existsSync(localBuild);
// A second local build without OpenMP (node-llama-cpp's prebuilt binaries are built so), if made with
// NODE_LLAMA_CPP_CMAKE_OPTION_GGML_OPENMP=OFF npx --no node-llama-cpp source build --gpu false
const variants = process.env.BENCH_NO_OPENMP_VARIANT === "0" ? [] : [{ label: "without OpenMP", cmakeOptions: { GGML_OPENMP: "OFF" } }];

const settings: PeerSettings = {
  modelPath: await ensureModel(resolveShape("realistic")),
  threads: Number(process.env.BENCH_THREADS ?? 2),
  contextSize: 4096,
};
const quick = flags.quick === true;
const rounds = Number(flags.rounds ?? (quick ? 1 : 3));
const load = (): string => os.loadavg().map((l) => l.toFixed(2)).join(" ");
log(`llama-server ${llamaServer} (llama.cpp ${checkoutCommit(llamaServer) ?? "?"}); node-llama-cpp native build: ${nativeBuild ? "yes" : "no"}; load ${load()}`);

interface Output {
  machine: { cpu: string; cores: number; loadStart: string; loadEnd?: string };
  settings: PeerSettings & { replyTokens: number; rounds: number };
  table?: Array<Record<string, string | number>>;
  rounds?: RoundResult[];
  /** Each server's times to ready (spawn → /health 200), every start of every round. */
  readyRuns?: Record<string, number[]>;
  ready?: Record<string, number>;
  memory?: Record<string, { afterRoundRobin: number; end: number; peak: number }>;
  longContext?: LongContextRow[];
  regenerate?: RegenerateAnatomy;
  readyParts?: ReadyParts[];
}
const output: Output = {
  machine: { cpu: os.cpus()[0]?.model ?? "?", cores: os.availableParallelism(), loadStart: load() },
  settings: { ...settings, replyTokens: REPLY_TOKENS, rounds },
};
/** Written after every round and section: a run of an hour that fails late keeps what it measured. */
const saveJson = (): void => {
  if (flags.json) writeFileSync(flags.json, `${JSON.stringify({ ...output, machine: { ...output.machine, loadEnd: load() } }, null, 2)}\n`);
};

/** Print (and keep in `output`) the table of `results`: TTFT ratios per scenario, time to ready, memory. */
function report(results: RoundResult[], readyAll: Record<string, number[]>, loadRange: string): void {
  const names = Object.keys(results[0]!.samples);
  const kvkeeps = names.filter((n) => n.startsWith("kvkeep"));
  const peers = ["llama-server defaults", "llama-server slot files"];
  const short = (n: string): string => n.replace("llama-server ", "").replace("kvkeep ", "");
  const ttft = (r: RoundResult, name: string, s: ScenarioName): number => median(r.samples[name]![s].map((x) => x.ttftMs));
  const rows: Array<Record<string, string | number>> = [];
  for (const { name, label } of SCENARIOS) {
    const row: Record<string, string | number> = { scenario: label };
    for (const n of names) row[`${n} ms`] = median(results.map((r) => ttft(r, n, name)));
    for (const k of kvkeeps) {
      for (const p of peers) row[`${short(k)} / ${short(p)}`] = median(results.map((r) => ttft(r, k, name) / ttft(r, p, name)));
    }
    row["cached tokens (kvkeep; slot files)"] = `${median(results.flatMap((r) => r.samples[kvkeeps[0]!]![name].map((x) => x.cachedTokens)))}; ${median(results.flatMap((r) => r.samples["llama-server slot files"]![name].map((x) => x.cachedTokens)))}`;
    row["prompt tokens"] = median(results.flatMap((r) => r.samples[kvkeeps[0]!]![name].map((x) => x.promptTokens)));
    rows.push(row);
  }
  const coldRow: Record<string, string | number> = { scenario: "cold prompt (first turn, nothing cached)" };
  for (const n of names) coldRow[`${n} ms`] = median(results.map((r) => r.cold[n]!.ttftMs));
  for (const k of kvkeeps) for (const p of peers) coldRow[`${short(k)} / ${short(p)}`] = median(results.map((r) => r.cold[k]!.ttftMs / r.cold[p]!.ttftMs));
  coldRow["cached tokens (kvkeep; slot files)"] = "0; 0";
  coldRow["prompt tokens"] = median(results.map((r) => r.cold[kvkeeps[0]!]!.promptTokens));
  rows.push(coldRow);

  console.log(
    `\nkvkeep serve vs llama-server (llama.cpp ${checkoutCommit(llamaServer) ?? "?"}, native) — realistic model, ${settings.threads} threads, ` +
      `context ${settings.contextSize}, 1 sequence, greedy, ${REPLY_TOKENS}-token replies, openai client streaming, TTFT at the client; ` +
      `${results.length} round(s), ratios = median over rounds of the round's median TTFT ratio; ${os.cpus()[0]?.model}, load ${loadRange}\n`,
  );
  console.log(table(rows));
  const restores = median(results.flatMap((r) => Object.values(r.samples["llama-server slot files"]!).flat().filter((s) => s.restoreMs > 0).map((s) => s.restoreMs)));
  console.log(`\n(slot files: the client's restore, when it made one, took ${restores.toFixed(1)} ms median, inside the TTFT above)`);

  const ready: Record<string, number> = {};
  const memory: Output["memory"] = {};
  for (const n of names) {
    ready[n] = readyAll[n] ? median(readyAll[n]) : Number.NaN;
    memory[n] = {
      afterRoundRobin: median(results.map((r) => r.memory[n]!.afterRoundRobin)),
      end: median(results.map((r) => r.memory[n]!.end)),
      peak: median(results.map((r) => r.memory[n]!.peak)),
    };
  }
  console.log(
    `\n${table(
      names.map((n) => ({
        server: n,
        "ready ms (spawn → /health 200)": Number.isNaN(ready[n]!) ? "not saved" : ready[n]!,
        "RSS MiB after 4 conversations": memory[n]!.afterRoundRobin,
        "RSS MiB at the end": memory[n]!.end,
        "peak RSS MiB": memory[n]!.peak,
      })),
    )}`,
  );
  Object.assign(output, { table: rows, rounds: results, readyRuns: readyAll, ready, memory });
  saveJson();
}

if (flags["from-json"]) {
  // A saved run's rounds (a run stopped early keeps those it finished): the table again.
  const saved = JSON.parse(readFileSync(flags["from-json"], "utf8")) as Output;
  if (!saved.rounds?.length) throw new Error(`${flags["from-json"]}: no rounds in it`);
  report(saved.rounds, saved.readyRuns ?? {}, `${saved.machine.loadStart} → ${saved.machine.loadEnd ?? "?"}`);
} else if (!flags["no-table"]) {
  const results: RoundResult[] = [];
  const readyAll: Record<string, number[]> = {};
  for (let round = 1; round <= rounds; round++) {
    const targets: Target[] = [
      ...(nativeBuild ? [kvkeepTarget("kvkeep native", settings, "auto")] : []),
      ...(!nativeBuild || flags.prebuilt ? [kvkeepTarget("kvkeep prebuilt", settings, "prebuilt")] : []),
      llamaServerTarget("llama-server defaults", settings, llamaServer, false),
      llamaServerTarget("llama-server slot files", settings, llamaServer, true),
    ];
    try {
      for (const target of targets) await target.start();
      results.push(
        await runRound(targets, {
          round,
          conversations: 4,
          turns: 5,
          newChats: 3,
          regenerates: 3,
          distinctConversations: quick ? 6 : 16,
          distinctTurns: 3,
          log,
        }),
      );
      for (const target of targets) (readyAll[target.name] ??= []).push(...target.readyMs);
    } finally {
      await Promise.all(targets.map((t) => t.dispose()));
    }
    Object.assign(output, { rounds: results, readyRuns: readyAll });
    saveJson();
    log(`round ${round} of ${rounds} done (load ${load()})`);
  }
  report(results, readyAll, `${output.machine.loadStart} → ${load()}`);
}

if (flags.regenerate) {
  const a = await regenerateAnatomy({ modelPath: settings.modelPath, threads: settings.threads, repeats: 5 });
  const kib = (bytes: number): string => `${(bytes / 2 ** 20).toFixed(1)} MiB`;
  console.log(
    `\nregenerate (node-llama-cpp ${a.buildType}; a ${a.promptTokens}-token prompt, the state ${a.stateTokens} tokens, ${kib(a.stateBytes)}; ` +
      `${a.evaluatedTokens} tokens evaluated; medians of 5)\n`,
  );
  console.log(
    table([
      { part: "kvkeep: time to first token of the regenerate", ms: a.kvkeepTtftMs },
      { part: "  of which kvkeep's load of the state (stats.loadMs)", ms: a.kvkeepLoadMs },
      { part: "node-llama-cpp alone: load the whole state file", ms: a.floorLoadFullMs },
      { part: `node-llama-cpp alone: load a state of the kept tokens only (${kib(a.keptBytes)})`, ms: a.floorLoadKeptMs },
      { part: "node-llama-cpp alone: cut the state back to the prompt", ms: a.floorCutMs },
      { part: `node-llama-cpp alone: evaluate the ${a.evaluatedTokens} new tokens, sample the first`, ms: a.floorEvaluateFirstTokenMs },
      { part: "kvkeep's own (time to first token − load − cut − evaluate)", ms: a.kvkeepTtftMs - a.kvkeepLoadMs - a.floorCutMs - a.floorEvaluateFirstTokenMs },
    ]),
  );
  const n = a.newChat;
  console.log(`\nnew chat, same system prompt (a ${n.promptTokens}-token prompt, ${n.reusedTokens} from a cache; medians of 5)\n`);
  console.log(
    table([
      { part: "kvkeep: time to first token of the new chat", ms: n.kvkeepTtftMs },
      { part: "  of which kvkeep's load of the other conversation's state", ms: n.kvkeepLoadMs },
      { part: "node-llama-cpp alone, holding that conversation: cut to the system prompt, evaluate, first token", ms: n.floorCutEvaluateFirstTokenMs },
      { part: `node-llama-cpp alone: save the system prompt's state (${kib(n.primeBytes)}; kvkeep's prime writes it)`, ms: n.floorSavePrimeMs },
    ]),
  );
  output.regenerate = a;
  saveJson();
}

if (flags.ready) {
  const builds = nativeBuild ? (["auto", "prebuilt"] as const) : (["prebuilt"] as const);
  const parts = await readyAnatomy({ ...settings, builds: [...builds], llamaServer, repeats: 5, log });
  console.log(`\nkvkeep serve's time to ready, step by step (ms from the process's start; medians of 5 fresh processes; llama-server: spawn → /health 200)\n`);
  console.log(table(parts));
  output.readyParts = parts;
  saveJson();
}

if (flags.long || flags["long-core"]) {
  const rows = await runLongContext({
    modelPath: settings.modelPath,
    llamaServer,
    threads: settings.threads,
    tokens: Number(process.env.BENCH_LONG_TOKENS ?? 8000),
    extra: [35, 64, 140],
    repeats: 3,
    nativeBuild,
    variants,
    core: flags["long-core"] === true,
    log,
  });
  console.log(`\nlong context: ${process.env.BENCH_LONG_TOKENS ?? 8000} tokens cold, then N more tokens (median of 3); ${settings.threads} threads\n`);
  console.log(
    table(
      rows.map((r) => ({
        engine: r.engine,
        settings: r.settings,
        "cold ms/token": r.coldMsPerToken,
        ...Object.fromEntries(Object.entries(r.extraMs).map(([n, ms]) => [`+${n} ms`, ms])),
        ...Object.fromEntries(Object.entries(r.extraMs).map(([n, ms]) => [`+${n} ms/token`, ms / Number(n)])),
      })),
    ),
  );
  output.longContext = rows;
  saveJson();
}

output.machine.loadEnd = load();
if (flags.json) writeFileSync(flags.json, `${JSON.stringify(output, null, 2)}\n`);
