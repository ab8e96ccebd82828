/**
 * `npm run facts` only (never `npm test`: they pin node-llama-cpp, not kvkeep).
 * Facts about node-llama-cpp 3.22.1 that kvkeep's adapter relies on, pinned on the
 * generated tiny model. Each test is named by the fact it pins; ENGINE-FACTS.md has
 * the write-up. Cases that can crash the process run in child processes.
 *
 * Timings on the realistic model are printed (not asserted) with
 *   KVKEEP_ENGINE_TIMINGS=1 npm run facts -- test/facts/engine-facts.test.ts
 */
import { spawn } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { pathToFileURL } from "node:url";
import { GgmlType, readGgufFileInfo, type LlamaContext, type LlamaModel, type Token } from "node-llama-cpp";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import {
  createContext,
  defaultChatWrapper,
  greedyGenerate,
  loadFixtureModel,
  machineThreads,
  openLlama,
  renderChat,
  type ChatMessage,
} from "../fixtures/engine.js";
import { ensureModel, FIXTURE_TOKENS, MODEL_SHAPES, type ModelShape } from "../fixtures/gguf/models.js";
import { observe } from "./observe.js";

const repoRoot = join(import.meta.dirname, "..", "..");
let dir: string;
let model: LlamaModel;
let modelPath: string;
const contexts: LlamaContext[] = [];

async function ctx(contextSize = 1024, extra: Omit<Parameters<typeof createContext>[1], "contextSize"> = {}): Promise<LlamaContext> {
  const c = await createContext(model, { contextSize, ...extra });
  contexts.push(c);
  return c;
}

const history: ChatMessage[] = [
  { role: "system", content: "You are a terse assistant." },
  { role: "user", content: "Tell me about caches, and why a conversation should resume from disk." },
];

function firstDiff(a: readonly number[], b: readonly number[]): number {
  let i = 0;
  while (i < a.length && i < b.length && a[i] === b[i]) i++;
  return i;
}

/** KV bytes per token of an F16 cache: K and V, every layer. */
function kvBytesPerToken(shape: ModelShape): number {
  const kvDim = (shape.embeddingLength / shape.headCount) * shape.headCountKv;
  return 2 * shape.blockCount * kvDim * 2;
}

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), "kvkeep-engine-facts-"));
  ({ model, path: modelPath } = await loadFixtureModel("tiny"));
});

afterAll(async () => {
  for (const c of contexts) if (!c.disposed) await c.dispose();
  rmSync(dir, { recursive: true, force: true });
});

// ---------------------------------------------------------------------------
// Child process probe: load a state file with plain node-llama-cpp, report JSON.

// Written to a file and run as `node <file>`, not with `node -e`: node-llama-cpp tests its
// binary in a fork() that inherits execArgv, and a `-e <code>` there re-runs the eval code.
const nodeLlamaCppEntry = pathToFileURL(join(repoRoot, "node_modules", "node-llama-cpp", "dist", "index.js")).href;
const LOAD_PROBE = `
import { getLlama, LlamaLogLevel } from ${JSON.stringify(nodeLlamaCppEntry)};
const [modelPath, statePath, optionsJson, nextToken] = process.argv.slice(2);
// llama.cpp logs reach JS through a separate queue from the load result: collect them
// with a logger and let them settle before reporting
const logs = [];
const logger = (level, message) => { if (level === "error" || level === "warn") logs.push(message); };
const settle = async () => {
  await new Promise((r) => setTimeout(r, 150));
  for (let seen = -1, i = 0; seen !== logs.length && i < 20; i++) { seen = logs.length; await new Promise((r) => setTimeout(r, 50)); }
};
const llama = await getLlama({ gpu: false, build: "never", skipDownload: true, progressLogs: false, maxThreads: 1, logLevel: LlamaLogLevel.warn, logger });
const model = await llama.loadModel({ modelPath });
const context = await model.createContext({ threads: 1, ...JSON.parse(optionsJson) });
const sequence = context.getSequence();
console.log("LOADING");
try {
  await sequence.loadStateFromFile(statePath, { acceptRisk: true });
} catch (err) {
  await settle();
  console.log(JSON.stringify({ loaded: false, error: String(err && err.message), logs: logs.join("\\n") }));
  process.exit(0);
}
const contextTokens = sequence.contextTokens.length;
const tokens = [];
for await (const t of sequence.evaluate([Number(nextToken)], { temperature: 0, yieldEogToken: true })) {
  tokens.push(t);
  if (tokens.length >= 12 || model.isEogToken(t)) break;
}
console.log(JSON.stringify({ loaded: true, contextTokens, tokens }));
process.exit(0);
`;

interface ProbeResult {
  readonly exitCode: number | null;
  readonly signal: NodeJS.Signals | null;
  readonly stderr: string;
  readonly reachedLoad: boolean;
  readonly result?: { loaded: boolean; error?: string; logs?: string; contextTokens?: number; tokens?: number[] };
}

const writtenProbes = new Set<string>();

/**
 * Write a probe script once per run. Concurrent tests share it: rewriting it (truncate,
 * then write) while a sibling's child starts would hand that child an empty script.
 */
function probeScript(name: string, code: string): string {
  const file = join(dir, name);
  if (!writtenProbes.has(file)) {
    writeFileSync(file, code);
    writtenProbes.add(file);
  }
  return file;
}

function runLoadProbe(modelFile: string, statePath: string, contextOptions: object, nextToken: number): Promise<ProbeResult> {
  const script = probeScript("load-probe.mjs", LOAD_PROBE);
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [script, modelFile, statePath, JSON.stringify(contextOptions), String(nextToken)], {
      cwd: repoRoot,
      stdio: ["ignore", "pipe", "pipe"],
    });
    let out = "";
    let err = "";
    child.stdout.on("data", (d: Buffer) => (out += d.toString()));
    child.stderr.on("data", (d: Buffer) => (err += d.toString()));
    child.on("error", reject);
    child.on("close", (exitCode, signal) => {
      const lines = out.trim().split("\n");
      const last = lines[lines.length - 1] ?? "";
      let result: ProbeResult["result"];
      try {
        result = last.startsWith("{") ? (JSON.parse(last) as ProbeResult["result"]) : undefined;
      } catch {
        result = undefined;
      }
      resolve({ exitCode, signal, stderr: err, reachedLoad: lines.includes("LOADING"), result });
    });
  });
}

// ---------------------------------------------------------------------------

describe("threads", () => {
  it("fixture contexts use os.availableParallelism() threads; node-llama-cpp's own default is at least 4", async () => {
    const llama = await openLlama();
    expect(llama.maxThreads).toBe(machineThreads());
    const c = await ctx(256);
    expect(c.idealThreads).toBe(machineThreads());

    const code =
      `import { getLlama, LlamaLogLevel } from ${JSON.stringify(nodeLlamaCppEntry)};` +
      "const l = await getLlama({ gpu: false, build: 'never', skipDownload: true, progressLogs: false, logLevel: LlamaLogLevel.error });" +
      "console.log(JSON.stringify({ maxThreads: l.maxThreads, cpuMathCores: l.cpuMathCores }));";
    const out = await new Promise<string>((resolve, reject) => {
      const child = spawn(process.execPath, [probeScript("threads-probe.mjs", code)], { cwd: repoRoot, stdio: ["ignore", "pipe", "inherit"] });
      let s = "";
      child.stdout.on("data", (d: Buffer) => (s += d.toString()));
      child.on("error", reject);
      child.on("close", () => resolve(s));
    });
    const defaults = JSON.parse(out.trim().split("\n").pop()!) as { maxThreads: number; cpuMathCores: number };
    expect(defaults.maxThreads).toBe(Math.max(4, defaults.cpuMathCores));
  });
});

describe("1. state files", () => {
  it("saveStateToFile + loadStateFromFile restore contextTokens and the exact greedy continuation", async () => {
    const prompt = renderChat(model, history);
    const original = (await ctx()).getSequence();
    const first = await greedyGenerate(original, prompt, 16);
    const saved = original.contextTokens;
    const statePath = join(dir, "roundtrip.bin");
    const { fileSize } = await original.saveStateToFile(statePath);
    expect(statSync(statePath).size).toBe(fileSize);

    const fresh = (await ctx()).getSequence();
    await fresh.loadStateFromFile(statePath, { acceptRisk: true });
    expect(fresh.contextTokens).toEqual(saved);
    expect(fresh.nextTokenIndex).toBe(saved.length);

    // continue both with the one token the cache lacks (the last generated one)
    const last = first.tokens[first.tokens.length - 1]!;
    const fromMemory = await greedyGenerate(original, [last], 24);
    const fromFile = await greedyGenerate(fresh, [last], 24);
    expect(fromFile.tokens).toEqual(fromMemory.tokens);
  });

  it("a state file is a fixed header plus (K+V bytes of every layer + 16) bytes per token", async () => {
    const perToken = kvBytesPerToken(MODEL_SHAPES.tiny) + 16;
    const seq = (await ctx()).getSequence();
    const sizes: Record<number, number> = {};
    sizes[0] = (await seq.saveStateToFile(join(dir, "size0.bin"))).fileSize;
    const tokens = model.tokenize("x".repeat(200));
    let done = 0;
    for (const n of [1, 10, 50, 200]) {
      await seq.evaluateWithoutGeneratingNewTokens(tokens.slice(done, n));
      done = n;
      sizes[n] = (await seq.saveStateToFile(join(dir, `size${n}.bin`))).fileSize;
    }
    expect(sizes[0]).toBe(20);
    const fixed = sizes[1]! - perToken;
    for (const n of [1, 10, 50, 200]) expect(sizes[n], `${n} tokens`).toBe(fixed + n * perToken);
    console.log(`[engine-facts] state file: ${fixed} + ${perToken} bytes/token (tiny, F16 KV); empty sequence: ${sizes[0]} bytes`);
  });

  it("a state loads into a context of another size while its tokens fit", async () => {
    const seq = (await ctx()).getSequence();
    const prompt = renderChat(model, history);
    await seq.evaluateWithoutGeneratingNewTokens(prompt);
    const statePath = join(dir, "sizes.bin");
    await seq.saveStateToFile(statePath);
    const reference = (await greedyGenerate(seq, [10 as Token], 12)).tokens;
    for (const size of [256, 2048]) {
      const other = (await ctx(size)).getSequence();
      await other.loadStateFromFile(statePath, { acceptRisk: true });
      expect(other.contextTokens).toEqual(prompt);
      expect((await greedyGenerate(other, [10 as Token], 12)).tokens).toEqual(reference);
    }
  });

  it("loadStateFromFile replaces what the sequence held", async () => {
    const a = (await ctx()).getSequence();
    await a.evaluateWithoutGeneratingNewTokens(model.tokenize("state A"));
    const statePath = join(dir, "replace.bin");
    await a.saveStateToFile(statePath);
    const b = (await ctx()).getSequence();
    await b.evaluateWithoutGeneratingNewTokens(model.tokenize("a longer, different state B"));
    await b.loadStateFromFile(statePath, { acceptRisk: true });
    expect(b.contextTokens).toEqual(model.tokenize("state A"));
  });

  describe.concurrent("loading a state that does not fit (child processes)", () => {
    let statePath: string;
    let savedTokens: number;
    let nextToken: number;
    let reference: number[];
    beforeAll(async () => {
      const seq = (await ctx()).getSequence();
      const prompt = renderChat(model, [history[0]!, { role: "user", content: "A longer question. ".repeat(16) }]);
      await seq.evaluateWithoutGeneratingNewTokens(prompt.slice(0, -1));
      nextToken = prompt[prompt.length - 1]!;
      statePath = join(dir, "probe.bin");
      await seq.saveStateToFile(statePath);
      savedTokens = seq.contextTokens.length;
      expect(savedTokens).toBeGreaterThan(256);
      reference = (await greedyGenerate(seq, [nextToken as Token], 12)).tokens;
    });

    const variant = (overrides: Partial<ModelShape>): Promise<string> => ensureModel("tiny", undefined, overrides);
    const copyWith = (name: string, edit: (b: Buffer) => Buffer): string => {
      const p = join(dir, name);
      writeFileSync(p, edit(readFileSync(statePath)));
      return p;
    };

    it("control: the same model and settings load it and continue identically", async () => {
      const r = await runLoadProbe(modelPath, statePath, { contextSize: 1024 }, nextToken);
      expect(r.signal, r.stderr).toBeNull();
      expect(r.result, r.stderr).toEqual({ loaded: true, contextTokens: savedTokens, tokens: reference });
    });

    it("a truncated state file aborts the whole process (SIGABRT), it does not throw", async () => {
      const truncated = copyWith("truncated.bin", (b) => b.subarray(0, Math.floor(b.length / 2)));
      const r = await runLoadProbe(modelPath, truncated, { contextSize: 1024 }, nextToken);
      expect(r.reachedLoad).toBe(true);
      expect(r.signal).toBe("SIGABRT");
      expect(r.stderr).toContain("GGML_ASSERT");
    });

    it("more tokens than the context holds: throws", async () => {
      const r = await runLoadProbe(modelPath, statePath, { contextSize: 256 }, nextToken);
      expect(r.signal).toBeNull();
      expect(r.result?.loaded).toBe(false);
      expect(r.result?.error).toMatch(/Failed to load state from file/);
    });

    it("a model with another layer count or KV width: throws (llama.cpp checks the layout)", async () => {
      for (const overrides of [{ blockCount: 3 }, { headCountKv: 4 }]) {
        const r = await runLoadProbe(await variant(overrides), statePath, { contextSize: 1024 }, nextToken);
        expect(r.signal, JSON.stringify(overrides)).toBeNull();
        expect(r.result?.loaded, JSON.stringify(overrides)).toBe(false);
        expect(r.result?.logs).toMatch(/mismatched (layer count|key row size)/);
      }
    });

    it("flash attention off vs the default (auto = on, on CPU): throws on V transposition", async () => {
      const off = await runLoadProbe(modelPath, statePath, { contextSize: 1024, flashAttention: false }, nextToken);
      expect(off.result?.loaded).toBe(false);
      expect(off.result?.logs).toContain("incompatible V transposition");
      const on = await runLoadProbe(modelPath, statePath, { contextSize: 1024, flashAttention: true }, nextToken);
      expect(on.result).toEqual({ loaded: true, contextTokens: savedTokens, tokens: reference });
    });

    it("an F32 KV cache vs the default F16: throws on the key type", async () => {
      const r = await runLoadProbe(
        modelPath,
        statePath,
        { contextSize: 1024, experimentalKvCacheKeyType: "F32", experimentalKvCacheValueType: "F32" },
        nextToken,
      );
      expect(r.result?.loaded).toBe(false);
      expect(r.result?.logs).toContain("mismatched key type");
    });

    // What the foreign state then generates is the CPU's numerics: observed. kvkeep's guard
    // (the fingerprint samples the weights) is test/engine/adapter.test.ts.
    it("another model of the same shape (other weights) loads it SILENTLY (no error, every token restored)", async () => {
      const r = await runLoadProbe(await variant({ seed: 2 }), statePath, { contextSize: 1024 }, nextToken);
      expect(r.result?.loaded).toBe(true);
      expect(r.result?.contextTokens).toBe(savedTokens);
      observe("a state loaded into a model of other weights generates the same tokens as its own model", JSON.stringify(r.result?.tokens) === JSON.stringify(reference));
    });

    it("corrupted KV bytes load silently; an empty file throws", async () => {
      const corrupt = copyWith("corrupt.bin", (b) => {
        for (let i = b.length - 256; i < b.length; i++) b[i] = b[i]! ^ 0x55;
        return b;
      });
      const r = await runLoadProbe(modelPath, corrupt, { contextSize: 1024 }, nextToken);
      expect(r.signal).toBeNull();
      expect(r.result?.loaded).toBe(true);
      const empty = copyWith("empty.bin", () => Buffer.alloc(0));
      const e = await runLoadProbe(modelPath, empty, { contextSize: 1024 }, nextToken);
      expect(e.result?.loaded).toBe(false);
    });
  });
});

describe("2. chat rendering", () => {
  const sys: ChatMessage = { role: "system", content: "You are a terse assistant." };
  const u1: ChatMessage = { role: "user", content: "Tell me about caches." };
  const a1: ChatMessage = { role: "assistant", content: "Caches keep things." };
  const u2: ChatMessage = { role: "user", content: "More please." };

  it("with the ChatML template: [system] is NOT a prefix of [system, user]; they differ in the trailing assistant header", () => {
    const s = renderChat(model, [sys]);
    const su = renderChat(model, [sys, u1]);
    expect(model.detokenize(s, true)).toBe("<|endoftext|><|im_start|>system\nYou are a terse assistant.<|im_end|>\n<|im_start|>assistant\n");
    const common = firstDiff(s, su);
    expect(common).toBeLessThan(s.length);
    // the shared prefix ends right after "<|im_start|>": "assistant\n" vs "user\n"
    expect(model.detokenize(s.slice(common), true)).toBe("assistant\n");
    expect(s[common - 1]).toBe(FIXTURE_TOKENS.imStart);
  });

  it("with the ChatML template: [s,u1] ⊑ [s,u1,a1] ⊑ [s,u1,a1,u2] (token prefixes); the BOS token is rendered although add_bos_token=false", () => {
    const su = renderChat(model, [sys, u1]);
    const sua = renderChat(model, [sys, u1, a1]);
    const suau = renderChat(model, [sys, u1, a1, u2]);
    expect(sua.slice(0, su.length)).toEqual(su);
    expect(suau.slice(0, sua.length)).toEqual(sua);
    expect(su[0]).toBe(FIXTURE_TOKENS.endOfText);
    // an assistant message that ends the history is rendered open (no <|im_end|>): generation continues it
    expect(model.detokenize(sua.slice(su.length), true)).toBe("Caches keep things.");
    expect(model.detokenize(suau.slice(sua.length), true)).toBe("<|im_end|>\n<|im_start|>user\nMore please.<|im_end|>\n<|im_start|>assistant\n");
  });

  it("without a template (General wrapper) the same prefix facts hold, with a different header", async () => {
    const { model: plain } = await loadFixtureModel("tiny", { overrides: { chatTemplate: "none" } });
    expect(defaultChatWrapper(plain).wrapperName).toBe("General");
    const s = renderChat(plain, [sys]);
    const su = renderChat(plain, [sys, u1]);
    const sua = renderChat(plain, [sys, u1, a1]);
    const suau = renderChat(plain, [sys, u1, a1, u2]);
    expect(plain.detokenize(su, true)).toBe("<|endoftext|>You are a terse assistant.\n\n### Human\nTell me about caches.\n\n### Assistant\n");
    const common = firstDiff(s, su);
    expect(plain.detokenize(s.slice(common), true)).toBe("Assistant\n");
    expect(sua.slice(0, su.length)).toEqual(su);
    expect(suau.slice(0, sua.length)).toEqual(sua);
  });

  it("the last generated token is never in the KV cache, and the reply re-renders to exactly the generated tokens", async () => {
    const seq = (await ctx()).getSequence();
    const prompt = renderChat(model, [sys, u1]);
    const { tokens, endedWithEog } = await greedyGenerate(seq, prompt, 20);
    expect(seq.contextTokens).toEqual([...prompt, ...tokens.slice(0, -1)]);
    const replyTokens = endedWithEog ? tokens.slice(0, -1) : tokens;
    const reply = model.detokenize(replyTokens);
    const rendered = renderChat(model, [sys, u1, { role: "assistant", content: reply }]);
    expect(rendered).toEqual([...prompt, ...replyTokens]);
    // the next turn's render extends what the cache holds
    const next = renderChat(model, [sys, u1, { role: "assistant", content: reply }, u2]);
    expect(seq.compareContextTokens(next).firstDifferentIndex).toBe(Math.min(seq.contextTokens.length, prompt.length + replyTokens.length));
  });
});

describe("3. evaluation control", () => {
  it("compareContextTokens returns the first index where the input departs from the cache (or the end of either)", async () => {
    const seq = (await ctx()).getSequence();
    const tokens = renderChat(model, history);
    await seq.evaluateWithoutGeneratingNewTokens(tokens);
    const edited = [...tokens];
    edited[40] = (edited[40]! === 65 ? 66 : 65) as Token;
    expect(seq.compareContextTokens(edited).firstDifferentIndex).toBe(40);
    expect(seq.compareContextTokens([...tokens, 10 as Token]).firstDifferentIndex).toBe(tokens.length);
    expect(seq.compareContextTokens(tokens.slice(0, 10)).firstDifferentIndex).toBe(10);
    expect(seq.compareContextTokens(tokens).firstDifferentIndex).toBe(tokens.length);
  });

  it("eraseContextTokenRanges([{start, end: nextTokenIndex}]) drops the tail; evaluating the rest matches a cold run", async () => {
    const tokens = renderChat(model, history);
    const cold = await greedyGenerate((await ctx()).getSequence(), tokens, 16);

    const seq = (await ctx()).getSequence();
    const edited = [...tokens];
    edited[40] = (edited[40]! === 65 ? 66 : 65) as Token;
    await seq.evaluateWithoutGeneratingNewTokens(edited);
    const { firstDifferentIndex } = seq.compareContextTokens(tokens);
    await seq.eraseContextTokenRanges([{ start: firstDifferentIndex, end: seq.nextTokenIndex }]);
    expect(seq.contextTokens).toEqual(tokens.slice(0, 40));
    expect(seq.nextTokenIndex).toBe(40);
    const resumed = await greedyGenerate(seq, tokens.slice(firstDifferentIndex), 16);
    expect(resumed.tokens).toEqual(cold.tokens);
  });

  it("a fully cached prompt still needs one evaluated token: erase the last one and evaluate it", async () => {
    const tokens = renderChat(model, history);
    const cold = await greedyGenerate((await ctx()).getSequence(), tokens, 16);
    const seq = (await ctx()).getSequence();
    await seq.evaluateWithoutGeneratingNewTokens(tokens);
    expect(seq.compareContextTokens(tokens).firstDifferentIndex).toBe(tokens.length);
    const start = tokens.length - 1;
    await seq.eraseContextTokenRanges([{ start, end: seq.nextTokenIndex }]);
    expect((await greedyGenerate(seq, tokens.slice(start), 16)).tokens).toEqual(cold.tokens);
  });

  it("evaluate([]) yields nothing, also right after loadStateFromFile (logits are not in the state)", async () => {
    const seq = (await ctx()).getSequence();
    await seq.evaluateWithoutGeneratingNewTokens(renderChat(model, history));
    const collect = async (s: typeof seq): Promise<Token[]> => {
      const out: Token[] = [];
      for await (const t of s.evaluate([], { temperature: 0, yieldEogToken: true })) {
        out.push(t);
        if (out.length >= 3) break;
      }
      return out;
    };
    expect(await collect(seq)).toEqual([]);
    const statePath = join(dir, "empty-eval.bin");
    await seq.saveStateToFile(statePath);
    const loaded = (await ctx()).getSequence();
    await loaded.loadStateFromFile(statePath, { acceptRisk: true });
    expect(await collect(loaded)).toEqual([]);
  });

  it("evaluate() stops silently at an end-of-generation token unless yieldEogToken: true", async () => {
    const { model: eager } = await loadFixtureModel("tiny", { overrides: { eogBias: 100 } }); // always answers <|im_end|>
    const prompt = renderChat(eager, history);
    const c = await createContext(eager, { contextSize: 512 });
    contexts.push(c);
    const seq = c.getSequence();
    const silent: Token[] = [];
    for await (const t of seq.evaluate(prompt, { temperature: 0 })) silent.push(t);
    expect(silent).toEqual([]);
    expect(seq.contextTokens).toEqual(prompt); // the prompt was evaluated, nothing yielded

    await seq.clearHistory();
    const r = await greedyGenerate(seq, prompt, 8); // yieldEogToken: true
    expect(r.tokens).toEqual([FIXTURE_TOKENS.imEnd]);
    expect(r.endedWithEog).toBe(true);
    expect(Number.isFinite(r.ttftMs)).toBe(true);
  });

  it("greedy (temperature 0) output is identical from memory and from a loaded state; a cold prefill's is observed (tiny model)", async () => {
    const agreement: string[] = [];
    for (const len of [50, 700]) {
      const prompt = renderChat(model, [history[0]!, { role: "user", content: "The quick brown fox jumps over the lazy dog. ".repeat(len / 45 + 1).slice(0, len) }]);
      const a = (await ctx(2048)).getSequence();
      await a.evaluateWithoutGeneratingNewTokens(prompt.slice(0, -1));
      const statePath = join(dir, `agree${len}.bin`);
      await a.saveStateToFile(statePath);
      const memory = await greedyGenerate(a, prompt.slice(-1), 48);
      const b = (await ctx(2048)).getSequence();
      await b.loadStateFromFile(statePath, { acceptRisk: true });
      const loaded = await greedyGenerate(b, prompt.slice(-1), 48);
      const cold = await greedyGenerate((await ctx(2048)).getSequence(), prompt, 48);
      expect(loaded.tokens).toEqual(memory.tokens);
      agreement.push(`${prompt.length} prompt tokens: cold agrees on ${firstDiff(cold.tokens, memory.tokens)}/${memory.tokens.length}`);
      observe(`tiny, ${prompt.length} prompt tokens: a cold prefill generates the same 48 greedy tokens as the sequence continuing in memory`, JSON.stringify(cold.tokens) === JSON.stringify(memory.tokens));
    }
    console.log(`[engine-facts] cold vs resumed greedy agreement (tiny): ${agreement.join("; ")}`);
  });
});

describe("5. fingerprint material", () => {
  it("fileInfo exposes metadata (u64 values as bigint, so JSON needs a replacer) and tensor info", async () => {
    const info = model.fileInfo;
    const seed = (info.metadata as unknown as { kvkeep: { fixture: { seed: unknown } } }).kvkeep.fixture.seed;
    expect(seed).toBe(1n);
    expect(() => JSON.stringify(info.metadata)).toThrow(/BigInt/);
    const json = JSON.stringify(info.metadata, (_k, v: unknown) => (typeof v === "bigint" ? v.toString() : v));
    expect(json).toContain('"architecture":"llama"');
    expect(info.tensorInfo?.[0]).toMatchObject({ name: "token_embd.weight", dimensions: [64, MODEL_SHAPES.tiny.vocabSize], ggmlType: GgmlType.F16 });
    expect(info.version).toBe(3);
    // the same data, read from the file without loading the model
    const fromFile = await readGgufFileInfo(modelPath, { logWarnings: false });
    expect(fromFile.tensorInfo?.map((t) => t.name)).toEqual(info.tensorInfo?.map((t) => t.name));
    expect(model.size).toBeGreaterThan(0);
    expect(statSync(modelPath).size).toBeGreaterThan(model.size); // model.size = tensor bytes, not the file size
    expect(model.trainContextSize).toBe(MODEL_SHAPES.tiny.contextLength);
  });

  it("llama.llamaCppRelease names the llama.cpp build; contexts report size (rounded up to 256), flash-attention option and KV types", async () => {
    const llama = await openLlama();
    expect(llama.llamaCppRelease).toEqual({ repo: "ggml-org/llama.cpp", release: expect.any(String) as string });
    expect(llama.gpu).toBe(false);
    const small = await ctx(100);
    expect(small.contextSize).toBe(256);
    const odd = await ctx(1000);
    expect(odd.contextSize).toBe(1024);
    expect(odd.getSequence().contextSize).toBe(1024);
    // the option as given, not what llama.cpp resolved ("auto" resolves to on for CPU; see the V transposition test)
    expect(odd.flashAttention).toBe("auto");
    expect(model.flashAttentionSupported).toBe(true);
    expect(odd.kvCacheKeyType).toBe(GgmlType.F16);
    expect(odd.kvCacheValueType).toBe(GgmlType.F16);
    console.log(`[engine-facts] llama.cpp release ${JSON.stringify(llama.llamaCppRelease)}`);
  });
});

// ---------------------------------------------------------------------------

describe.runIf(process.env.KVKEEP_ENGINE_TIMINGS === "1")("4. timings on the realistic model (printed, not asserted)", () => {
  it("prints load / prefill / save / load / time-to-first-token", { timeout: 600_000 }, async () => {
    const lines: string[] = [];
    const log = (s: string): void => {
      lines.push(s);
    };
    const ms = (t: number): string => `${t.toFixed(1)} ms`;
    let t = performance.now();
    const { path, model: big } = await loadFixtureModel("realistic");
    log(`generate-or-find + load realistic model (${(statSync(path).size / 1e6).toFixed(1)} MB): ${ms(performance.now() - t)}`);
    t = performance.now();
    const reload = await (await openLlama()).loadModel({ modelPath: path });
    log(`loadModel (file in page cache): ${ms(performance.now() - t)}`);
    await reload.dispose();
    const words = "the cache keeps state so a model resumes quickly when a user returns to an old conversation ";
    for (const threads of [machineThreads(), 1]) {
      log(`--- threads: ${threads}`);
      for (const n of [500, 2000]) {
        let text = "";
        while (text.length < n) text += words;
        const prompt = renderChat(big, [{ role: "system", content: "You are helpful." }, { role: "user", content: text }]).slice(0, n + 1);
        t = performance.now();
        const c1 = await createContext(big, { contextSize: 4096, threads });
        log(`[${n}] createContext(4096): ${ms(performance.now() - t)}`);
        const s1 = c1.getSequence();
        t = performance.now();
        await s1.evaluateWithoutGeneratingNewTokens(prompt.slice(0, n));
        const prefill = performance.now() - t;
        log(`[${n}] prefill ${n} tokens: ${ms(prefill)} (${((n / prefill) * 1000).toFixed(0)} tok/s)`);
        const statePath = join(dir, `realistic-${n}.bin`);
        t = performance.now();
        const { fileSize } = await s1.saveStateToFile(statePath);
        log(`[${n}] saveStateToFile: ${ms(performance.now() - t)}, ${(fileSize / 1e6).toFixed(2)} MB (${(fileSize / n).toFixed(0)} B/token)`);
        const warm = await greedyGenerate(s1, prompt.slice(n), 4);
        log(`[${n}] in-memory: evaluate 1 token -> first token: ${ms(warm.ttftMs)}`);

        // cold: full prefill of n+1 tokens in a fresh context
        const c2 = await createContext(big, { contextSize: 4096, threads });
        const cold = await greedyGenerate(c2.getSequence(), prompt, 4);
        log(`[${n}] cold TTFT (prefill ${n + 1} tokens): ${ms(cold.ttftMs)}`);

        // resumed into a fresh context
        const c3 = await createContext(big, { contextSize: 4096, threads });
        const s3 = c3.getSequence();
        t = performance.now();
        await s3.loadStateFromFile(statePath, { acceptRisk: true });
        const load = performance.now() - t;
        const resumed = await greedyGenerate(s3, prompt.slice(n), 4);
        log(
          `[${n}] fresh context: loadStateFromFile ${ms(load)} + evaluate 1 -> first token ${ms(resumed.ttftMs)} = ${ms(load + resumed.ttftMs)} (cold/resumed = ${(cold.ttftMs / (load + resumed.ttftMs)).toFixed(1)}x)`,
        );

        // resumed into an existing, previously used context (the "raw engine floor")
        await s1.clearHistory();
        t = performance.now();
        await s1.loadStateFromFile(statePath, { acceptRisk: true });
        const load2 = performance.now() - t;
        const floor = await greedyGenerate(s1, prompt.slice(n), 4);
        log(`[${n}] used context: loadStateFromFile ${ms(load2)} + evaluate 1 -> first token ${ms(floor.ttftMs)} = ${ms(load2 + floor.ttftMs)}`);
        log(`[${n}] same first tokens: resumed=${resumed.tokens.join() === warm.tokens.join()} cold=${cold.tokens.join() === warm.tokens.join()}`);
        await Promise.all([c1.dispose(), c2.dispose(), c3.dispose()]);
      }
    }
    console.log(`[engine-facts] timings (threads=${machineThreads()} of ${machineThreads()} cores):\n${lines.join("\n")}`);
  });
});
