/**
 * The kvkeep demo (`npm run demo`): a local model resumes a conversation from its kvkeep
 * cache in a fresh process, against re-reading the whole history cold.
 *
 * 1. Generates the 512-dim, 8-layer test model (random weights, ~117 MB) if needed.
 * 2. Holds a short conversation with it through kvkeep's node-llama-cpp adapter.
 * 3. Runs the next turn again in two fresh processes — once cold (no cache), once resumed
 *    from kvkeep — and prints the time to first token of each and their ratio.
 * 4. Starts a new chat with the same system prompt in a fresh process, cold and with kvkeep
 *    (which starts it from the first chat's cache: prefix reuse).
 *
 * The model's weights are random, so its replies are gibberish; the timings and the state
 * files are real. Nothing outside a temp directory is written.
 *
 * `npm run demo -- --model hf:Qwen/Qwen3-0.6B-GGUF:Q8_0` runs the same on a real model: a
 * GGUF path, an hf: URI or a URL, downloaded once (with progress) into node-llama-cpp's
 * models directory, or `--models-dir DIR`.
 */
import { spawn } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { parseArgs } from "node:util";
import { createLlamaCppCompletion } from "../src/engines/node-llama-cpp/index.js";
import { openKvCacheStore, type CacheMessage } from "../src/index.js";
import { resolveModelSpec } from "../src/server/model-source.js";
import { startupStatus } from "../src/server/startup-status.js";
import { ensureModel } from "../test/fixtures/gguf/models.js";
import { openLlama } from "../test/fixtures/engine.js";

const CONTEXT = 4096;
const REPLY_TOKENS = 48;
const SESSION = "demo-chat";

/** A long system prompt (the byte-level vocab makes one token per character): ~1 500 tokens. */
const SYSTEM = [
  "You are the support assistant of a hardware shop that sells keyboards, mice and monitors.",
  "Answer briefly. Quote prices in euros. Never promise delivery dates you cannot keep.",
  ...Array.from({ length: 18 }, (_, i) => `Policy ${i + 1}: returns within 30 days need the receipt, the original box and every accessory; refunds go to the original payment method.`),
].join("\n");

const USER_TURNS = [
  "Hello! I bought a mechanical keyboard last week and two keys feel sticky. What can I do?",
  "I still have the box but I lost the receipt. Can I return it anyway?",
  "Fine. Which monitor would you recommend for programming, under 300 euros?",
  "And does it come with a cable for a laptop with only USB-C ports?",
];

interface TurnReport {
  text: string;
  stats: { hit: boolean; promptTokens: number; reusedTokens: number; evaluatedTokens: number; ttftMs: number; loadMs: number; saveMs: number; source: string; sourceKey: string | null };
}

async function adapterFor(modelPath: string, root: string) {
  const llama = await openLlama();
  const model = await llama.loadModel({ modelPath });
  const store = openKvCacheStore({ root, onRollback: "keep-committed" });
  return { adapter: createLlamaCppCompletion({ model, store, contextSize: CONTEXT, modelPath }), store };
}

/** Child mode: run one turn in this fresh process and print its report as JSON. */
type Mode = "cold" | "resumed" | "new-chat";

async function childTurn(modelPath: string, root: string, mode: Mode, historyJson: string): Promise<void> {
  const { adapter, store } = await adapterFor(modelPath, root);
  const history = JSON.parse(historyJson) as CacheMessage[];
  const result = await adapter.completion({
    history,
    kvCache: mode === "cold" ? false : mode === "resumed" ? SESSION : "another-chat",
    maxTokens: REPLY_TOKENS,
    temperature: 0,
  });
  await adapter.dispose();
  await store.close();
  process.stdout.write(`${JSON.stringify(result)}\n`);
}

function runChildTurn(modelPath: string, root: string, mode: Mode, history: CacheMessage[]): Promise<TurnReport> {
  const script = fileURLToPath(import.meta.url);
  return new Promise((resolve, reject) => {
    // execArgv carries tsx's loader, so the child runs this same TypeScript file.
    const child = spawn(process.execPath, [...process.execArgv, script, "--child", modelPath, root, mode, JSON.stringify(history)], {
      stdio: ["ignore", "pipe", "inherit"],
    });
    let out = "";
    child.stdout.setEncoding("utf8").on("data", (chunk: string) => (out += chunk));
    child.on("exit", (code) => {
      const line = out.trim().split("\n").pop() ?? "";
      if (code === 0 && line.startsWith("{")) resolve(JSON.parse(line) as TurnReport);
      else reject(new Error(`the ${mode} child exited with ${code}`));
    });
  });
}

const ms = (n: number): string => `${n.toFixed(1)} ms`;

function printTable(runs: Array<[string, TurnReport]>): void {
  const rows = [
    ["", "prompt tokens", "from cache", "evaluated", "load", "time to first token"],
    ...runs.map(([name, r]) => [name, r.stats.promptTokens, r.stats.reusedTokens, r.stats.evaluatedTokens, r.stats.loadMs ? ms(r.stats.loadMs) : "-", ms(r.stats.ttftMs)]),
  ].map((r) => r.map(String));
  const widths = rows[0]!.map((_, i) => Math.max(...rows.map((r) => r[i]!.length)));
  for (const row of rows) console.log("   " + row.map((c, i) => (i === 0 ? c.padEnd(widths[i]!) : c.padStart(widths[i]!))).join("   "));
}

/** "n/m": leading characters two replies share, of the longer one's length. */
function agreement(a: string, b: string): string {
  let same = 0;
  while (same < Math.min(a.length, b.length) && a[same] === b[same]) same++;
  return `${same} of ${Math.max(a.length, b.length)}`;
}

/** The demo's model: `--model SPEC` resolved (downloaded with progress on stderr), else the generated test model. */
async function demoModel(argv: string[]): Promise<{ path: string; real: boolean }> {
  const { values } = parseArgs({ args: argv, options: { model: { type: "string" }, "models-dir": { type: "string" } }, strict: true });
  if (values.model === undefined) {
    console.log("1. test model (512-dim, 8 layers, random weights; generated once, ~117 MB)");
    return { path: await ensureModel("realistic"), real: false };
  }
  console.log(`1. the model ${values.model}`);
  const status = startupStatus(process.stderr, "   ");
  const resolved = await resolveModelSpec(values.model, {
    modelsDir: values["models-dir"] ?? null,
    onDownload: (progress) => status.report({ step: "download", spec: values.model!, ...progress }),
  });
  status.done();
  return { path: resolved.path, real: true };
}

async function main(argv: string[]): Promise<void> {
  console.log("kvkeep demo — resume a local model's conversation from its on-disk KV cache\n");
  const started = performance.now();
  const { path: modelPath, real } = await demoModel(argv);
  console.log(`   ${modelPath}  (${ms(performance.now() - started)})\n`);

  const root = mkdtempSync(path.join(os.tmpdir(), "kvkeep-demo-"));
  // KVKEEP_DEMO_KEEP=1 leaves the root for a look with the CLI (npx kvkeep --root DIR scan).
  const keep = process.env.KVKEEP_DEMO_KEEP === "1";
  try {
    console.log(`2. a conversation, cached by kvkeep under ${root}${keep ? "" : " (removed at the end; KVKEEP_DEMO_KEEP=1 keeps it)"}`);
    const { adapter, store } = await adapterFor(modelPath, root);
    let history: CacheMessage[] = [{ role: "system", content: SYSTEM }];
    for (const user of USER_TURNS.slice(0, -1)) {
      history = [...history, { role: "user", content: user }];
      const { text, stats } = await adapter.completion({ history, kvCache: SESSION, maxTokens: REPLY_TOKENS, temperature: 0 });
      console.log(
        `   turn ${history.length / 2 | 0}: prompt ${stats.promptTokens} tokens, ${stats.reusedTokens} from the cache, ` +
          `${stats.evaluatedTokens} evaluated, first token after ${ms(stats.ttftMs)}`,
      );
      if (real) console.log(`     ${JSON.stringify(text.length > 100 ? `${text.slice(0, 100)}…` : text)}`);
      history = [...history, { role: "assistant", content: text }];
    }
    console.log(`   backend: ${store.backend}${real ? "" : "; the model's replies are gibberish (random weights)"}\n`);
    await adapter.dispose();
    await store.close();

    const next = [...history, { role: "user", content: USER_TURNS.at(-1)! }];
    console.log("3. the next turn in a fresh process (as after an app restart), twice:");
    const cold = await runChildTurn(modelPath, root, "cold", next);
    const resumed = await runChildTurn(modelPath, root, "resumed", next);

    printTable([
      ["cold (no cache)", cold],
      ["resumed (kvkeep)", resumed],
    ]);
    const ratio = resumed.stats.ttftMs / cold.stats.ttftMs;
    console.log(`\n   resumed / cold time to first token: ${ratio.toFixed(3)}  (${(1 / ratio).toFixed(1)}× faster)`);
    console.log(`   the two replies agree on their first ${agreement(cold.text, resumed.text)} characters (greedy decoding)\n`);

    const newChat = [history[0]!, { role: "user", content: "Hi! Do you also sell webcams, and can I return one if it does not fit my monitor?" }];
    console.log("4. a new chat with the same system prompt, in a fresh process, twice:");
    const newCold = await runChildTurn(modelPath, root, "cold", newChat);
    const newWarm = await runChildTurn(modelPath, root, "new-chat", newChat);
    printTable([
      ["cold (no cache)", newCold],
      [`kvkeep (${newWarm.stats.source === "prefix" ? "from the first chat's cache" : newWarm.stats.source})`, newWarm],
    ]);
    const newRatio = newWarm.stats.ttftMs / newCold.stats.ttftMs;
    console.log(`\n   with kvkeep / cold time to first token: ${newRatio.toFixed(3)}  (${(1 / newRatio).toFixed(1)}× faster: the system prompt came from the other chat)`);
    console.log(`   the two replies agree on their first ${agreement(newCold.text, newWarm.text)} characters (greedy decoding)`);
    console.log(`\ndone in ${((performance.now() - started) / 1000).toFixed(1)} s`);
    if (keep) console.log(`the caches are kept: npx kvkeep --root ${root} scan`);
  } finally {
    if (!keep) rmSync(root, { recursive: true, force: true });
  }
}

if (process.argv[2] === "--child") {
  const [, , , modelPath, root, mode, historyJson] = process.argv as string[];
  await childTurn(modelPath!, root!, mode as Mode, historyJson!);
  process.exit(0);
} else {
  await main(process.argv.slice(2));
}
