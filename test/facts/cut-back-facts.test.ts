/**
 * `npm run facts` only (never `npm test`: these pin node-llama-cpp, not kvkeep, and the
 * replies depend on the CPU's numerics). What node-llama-cpp 3.22.1 does when a state LOADED FROM A FILE is cut back to a shorter
 * prefix (`eraseContextTokenRanges` from the first differing token to the end), on the three
 * kinds of models kvkeep meets: full attention (tiny, llama), sliding-window attention
 * (tinySwa, gemma3) and recurrent (tinyMamba, mamba). Each test is named by the fact it
 * pins; ENGINE-FACTS.md ("Models that cannot cut a state back") has the write-up, and
 * src/engines/node-llama-cpp/state-trim.ts the policy that follows from them.
 *
 * "Re-evaluated" is read from `sequence.tokenMeter.usedInputTokens` (one per evaluated
 * input token): a cut node-llama-cpp cannot make in the cache it silently replaces by
 * evaluating the kept tokens again from token 0. Greedy decoding; replies are compared
 * with a cold run of the same prompt in a fresh context.
 */
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { LlamaContext, LlamaContextSequence, LlamaModel, Token } from "node-llama-cpp";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { readStateTrimTraits, stateTrimPolicy } from "../../src/engines/node-llama-cpp/state-trim.js";
import { createContext, greedyGenerate, loadFixtureModel } from "../fixtures/engine.js";
import { MODEL_SHAPES } from "../fixtures/gguf/models.js";
import { observe } from "./observe.js";

type Name = "tiny" | "tinySwa" | "tinyMamba";
const models = {} as Record<Name, LlamaModel>;
const contexts: LlamaContext[] = [];
let dir: string;
let files = 0;

const WINDOW = MODEL_SHAPES.tinySwa.slidingWindow;
const GENERATE = 12;

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), "kvkeep-cut-back-"));
  for (const name of ["tiny", "tinySwa", "tinyMamba"] as const) models[name] = (await loadFixtureModel(name)).model;
});

afterAll(async () => {
  for (const c of contexts) if (!c.disposed) await c.dispose();
  rmSync(dir, { recursive: true, force: true });
});

async function freshSequence(name: Name, options: { swaFullCache?: boolean } = {}): Promise<LlamaContextSequence> {
  // one thread: these models are tiny, and on a loaded machine llama.cpp's spinning thread
  // pool makes a second thread many times slower, not faster (ENGINE-FACTS.md, Threads)
  const context = await createContext(models[name], { contextSize: 1024, threads: 1, ...options });
  contexts.push(context);
  return context.getSequence();
}

const tokens = (name: Name, text: string): Token[] => models[name].tokenize(text);

/** ~115 tokens every scenario shares, then a question that differs from what the state holds. */
const COMMON = "A cache keeps the state of a conversation on disk, so that the model resumes at once when a user returns. ";
const QUESTION = " Why would a user want that? Tell me.";

/** Evaluate `state` in a fresh sequence and save it; the path of the file. */
async function saveState(name: Name, state: readonly Token[], options: { swaFullCache?: boolean } = {}): Promise<string> {
  const seq = await freshSequence(name, options);
  await seq.evaluateWithoutGeneratingNewTokens([...state]);
  const path = join(dir, `state-${files++}.bin`);
  await seq.saveStateToFile(path);
  return path;
}

async function loaded(name: Name, path: string, options: { swaFullCache?: boolean } = {}): Promise<LlamaContextSequence> {
  const seq = await freshSequence(name, options);
  await seq.loadStateFromFile(path, { acceptRisk: true });
  return seq;
}

/** Input tokens the engine evaluated while `action` ran. */
async function evaluatedDuring(seq: LlamaContextSequence, action: () => Promise<unknown>): Promise<number> {
  const before = seq.tokenMeter.usedInputTokens;
  await action();
  return seq.tokenMeter.usedInputTokens - before;
}

const equal = (a: readonly Token[], b: readonly Token[]): boolean => a.length === b.length && a.every((t, i) => t === b[i]);

async function coldReply(name: Name, prompt: readonly Token[]): Promise<Token[]> {
  return (await greedyGenerate(await freshSequence(name), prompt, GENERATE)).tokens;
}

interface CutBack {
  /** Input tokens evaluated by the erase itself. */
  readonly reEvaluated: number;
  readonly keptTokens: Token[];
  readonly reply: Token[];
  readonly cold: Token[];
  /** The reply when the question is evaluated on the loaded state NOT cut back (a wrong state). */
  readonly uncut: Token[];
}

/**
 * Load a state holding COMMON + `cut` tokens the prompt does not have, cut it back to COMMON
 * and answer QUESTION; compared with a cold run and with the uncut (wrong) state.
 */
async function cutBackLoadedState(name: Name, cut: number, options: { swaFullCache?: boolean } = {}): Promise<CutBack> {
  const common = tokens(name, COMMON);
  const question = tokens(name, QUESTION);
  const path = await saveState(name, [...common, ...tokens(name, "x".repeat(cut))], options);
  const seq = await loaded(name, path, options);
  const reEvaluated = await evaluatedDuring(seq, () => seq.eraseContextTokenRanges([{ start: common.length, end: seq.nextTokenIndex }]));
  const keptTokens = seq.contextTokens;
  const reply = (await greedyGenerate(seq, question, GENERATE)).tokens;
  const uncut = (await greedyGenerate(await loaded(name, path, options), question, GENERATE)).tokens;
  return { reEvaluated, keptTokens, reply, cold: await coldReply(name, [...common, ...question]), uncut };
}

// ---------------------------------------------------------------------------

describe("what node-llama-cpp reports about each architecture", () => {
  it("fileInsights: llama none; gemma3 swaSize = the sliding window; mamba isRecurrent; none of them isHybrid", () => {
    const insights = (name: Name) => {
      const { isRecurrent, isHybrid, swaSize } = models[name].fileInsights;
      return { isRecurrent, isHybrid, swaSize };
    };
    expect(insights("tiny")).toEqual({ isRecurrent: false, isHybrid: false, swaSize: undefined });
    expect(insights("tinySwa")).toEqual({ isRecurrent: false, isHybrid: false, swaSize: WINDOW });
    expect(insights("tinyMamba")).toEqual({ isRecurrent: true, isHybrid: false, swaSize: undefined });
    expect(models.tinySwa.defaultContextSwaFullCache).toBe(false);
  });

  it("readStateTrimTraits + stateTrimPolicy on the real models: any prefix / 1 token / none", () => {
    const policy = (name: Name, swaFullCache?: boolean) => stateTrimPolicy(readStateTrimTraits(models[name], { swaFullCache }));
    expect(policy("tiny")).toEqual({ maxCutBack: Number.POSITIVE_INFINITY });
    expect(policy("tinySwa")).toEqual({ maxCutBack: 1, limitedBy: "sliding-window" });
    expect(policy("tinySwa", true)).toEqual({ maxCutBack: 1, limitedBy: "sliding-window" });
    expect(policy("tinyMamba")).toEqual({ maxCutBack: 0, limitedBy: "recurrent" });
  });

  it("needsCheckpoints: true for mamba and for gemma3 without swaFullCache; with it node-llama-cpp believes the cache can be cut anywhere", async () => {
    expect((await freshSequence("tiny")).needsCheckpoints).toBe(false);
    expect((await freshSequence("tinyMamba")).needsCheckpoints).toBe(true);
    expect((await freshSequence("tinySwa")).needsCheckpoints).toBe(true);
    expect((await freshSequence("tinySwa", { swaFullCache: true })).needsCheckpoints).toBe(false);
  });
});

describe("state files of every architecture", () => {
  it("round-trip: a loaded state plus the one missing token continues exactly like the in-memory sequence", async () => {
    for (const name of ["tiny", "tinySwa", "tinyMamba"] as const) {
      const prompt = tokens(name, COMMON + QUESTION);
      const original = await freshSequence(name);
      await original.evaluateWithoutGeneratingNewTokens(prompt.slice(0, -1));
      const path = join(dir, `roundtrip-${name}.bin`);
      await original.saveStateToFile(path);
      const fresh = await loaded(name, path);
      expect(fresh.contextTokens, name).toEqual(prompt.slice(0, -1));
      const fromFile = await greedyGenerate(fresh, prompt.slice(-1), GENERATE);
      const fromMemory = await greedyGenerate(original, prompt.slice(-1), GENERATE);
      expect(fromFile.tokens, name).toEqual(fromMemory.tokens);
    }
  });

  it("sizes: mamba's state is 19 536 bytes + 4 per token (the token list) at any length; gemma3's SWA layer stops growing at the window", async () => {
    const sizesAt = async (name: Name, counts: readonly number[]): Promise<number[]> => {
      const seq = await freshSequence(name);
      const text = tokens(name, "x".repeat(counts[counts.length - 1]!));
      const sizes: number[] = [];
      for (const n of counts) {
        await seq.evaluateWithoutGeneratingNewTokens(text.slice(seq.nextTokenIndex, n));
        sizes.push((await seq.saveStateToFile(join(dir, `size-${name}-${n}.bin`))).fileSize);
      }
      return sizes;
    };
    const mamba = await sizesAt("tinyMamba", [1, 50, 400]);
    expect(mamba).toEqual([19_536 + 4, 19_536 + 4 * 50, 19_536 + 4 * 400]);

    const [s10, s32, s200, s400] = await sizesAt("tinySwa", [10, WINDOW, 200, 400]);
    const withinWindow = (s32! - s10!) / (WINDOW - 10);
    const beyondWindow = (s400! - s200!) / 200;
    // the full-attention layer and the token list keep growing; the SWA layer's K+V (2·16·2 B) + cell metadata no longer do
    expect(withinWindow).toBe(156);
    expect(beyondWindow).toBe(80);
    expect((await sizesAt("tiny", [10, 200]))[1]! - (await sizesAt("tiny", [10]))[0]!).toBe(144 * 190);
  });

  it("after a load, stateCellsStartIndex is 0 (llama), n - swaSize (gemma3, also with swaFullCache) and n - 1 (mamba)", async () => {
    const state = tokens("tiny", COMMON);
    const n = state.length;
    expect((await loaded("tiny", await saveState("tiny", state))).stateCellsStartIndex).toBe(0);
    expect((await loaded("tinySwa", await saveState("tinySwa", state))).stateCellsStartIndex).toBe(n - WINDOW);
    const full = { swaFullCache: true };
    expect((await loaded("tinySwa", await saveState("tinySwa", state, full), full)).stateCellsStartIndex).toBe(n - WINDOW);
    expect((await loaded("tinyMamba", await saveState("tinyMamba", state))).stateCellsStartIndex).toBe(n - 1);
    // the live sequence that evaluated the same tokens still holds them all (its SWA cache has 768 cells)
    const live = await freshSequence("tinySwa");
    await live.evaluateWithoutGeneratingNewTokens(state);
    expect(live.stateCellsStartIndex).toBe(0);
  });
});

describe("cutting a loaded state back", () => {
  it("llama: by any amount (1, 8, 40 tokens) exactly, re-evaluating nothing", async () => {
    for (const cut of [1, 8, 40]) {
      const r = await cutBackLoadedState("tiny", cut);
      expect(r.reEvaluated, `cut ${cut}`).toBe(0);
      expect(r.reply, `cut ${cut}`).toEqual(r.cold);
      observe(`llama, cut ${cut}: the UNCUT state's reply equals cold (false = this test can tell a wrong state)`, equal(r.uncut, r.cold));
    }
  });

  it("mamba: does not throw; node-llama-cpp re-evaluates the whole kept prefix from token 0 (right reply, nothing reused)", async () => {
    const common = tokens("tinyMamba", COMMON);
    for (const cut of [1, 8]) {
      const r = await cutBackLoadedState("tinyMamba", cut);
      expect(r.reEvaluated, `cut ${cut}`).toBe(common.length);
      expect(r.keptTokens, `cut ${cut}`).toEqual(common);
      expect(r.reply, `cut ${cut}`).toEqual(r.cold);
      observe(`mamba, cut ${cut}: the UNCUT state's reply equals cold (false = this test can tell a wrong state)`, equal(r.uncut, r.cold));
    }
  });

  it("gemma3: by one token exactly, re-evaluating nothing", async () => {
    const r = await cutBackLoadedState("tinySwa", 1);
    expect(r.reEvaluated).toBe(0);
    expect(r.reply).toEqual(r.cold);
  });

  // Wrong, not slow: the window's older cells are missing. Whether that changes the next 12
  // greedy tokens of the tiny model depends on the CPU (on this project's EPYC it did in
  // earlier runs, then not): observed, never asserted. kvkeep's guard is its policy
  // (maxCutBack 1), pinned in test/engine/prefix-trim.test.ts.
  it("gemma3: by 8 or swaSize-1 tokens nothing is re-evaluated and node-llama-cpp believes the cut worked (also with swaFullCache); the reply is observed", async () => {
    const common = tokens("tinySwa", COMMON);
    for (const [cut, options] of [
      [8, {}],
      [WINDOW - 1, {}],
      [WINDOW - 1, { swaFullCache: true }],
    ] as const) {
      const label = `cut ${cut} ${JSON.stringify(options)}`;
      const r = await cutBackLoadedState("tinySwa", cut, options);
      expect(r.reEvaluated, label).toBe(0);
      expect(r.keptTokens, label).toEqual(common); // node-llama-cpp believes the cut worked
      observe(`gemma3, loaded state cut back by ${label}: reply equals cold`, equal(r.reply, r.cold));
    }
  });

  it("gemma3: by swaSize tokens or more, node-llama-cpp re-evaluates the kept prefix from token 0 (right reply, nothing reused)", async () => {
    const common = tokens("tinySwa", COMMON);
    for (const cut of [WINDOW, 40]) {
      const r = await cutBackLoadedState("tinySwa", cut);
      expect(r.reEvaluated, `cut ${cut}`).toBe(common.length);
      expect(r.reply, `cut ${cut}`).toEqual(r.cold);
    }
  });

  it("gemma3, live (not loaded): the sequence that evaluated the tokens itself cuts back 40 tokens exactly, re-evaluating nothing", async () => {
    const common = tokens("tinySwa", COMMON);
    const question = tokens("tinySwa", QUESTION);
    const seq = await freshSequence("tinySwa");
    await seq.evaluateWithoutGeneratingNewTokens([...common, ...tokens("tinySwa", "x".repeat(40))]);
    expect(await evaluatedDuring(seq, () => seq.eraseContextTokenRanges([{ start: common.length, end: seq.nextTokenIndex }]))).toBe(0);
    expect((await greedyGenerate(seq, question, GENERATE)).tokens).toEqual(await coldReply("tinySwa", [...common, ...question]));
  });
});

describe("exact ancestors (a proper prefix of the prompt: nothing to cut)", () => {
  it("every architecture: load, evaluate only the rest, reply exactly like cold", async () => {
    for (const name of ["tiny", "tinySwa", "tinyMamba"] as const) {
      const common = tokens(name, COMMON);
      const question = tokens(name, QUESTION);
      const seq = await loaded(name, await saveState(name, common));
      const evaluated = await evaluatedDuring(seq, () => seq.evaluateWithoutGeneratingNewTokens(question.slice(0, -1)));
      expect(evaluated, name).toBe(question.length - 1);
      expect((await greedyGenerate(seq, question.slice(-1), GENERATE)).tokens, name).toEqual(await coldReply(name, [...common, ...question]));
    }
  });

  it("a fully cached prompt (the state IS the prompt): erasing the last token to evaluate it is free on llama and gemma3, a full re-evaluation on mamba", async () => {
    const reEvaluated: Record<string, number> = {};
    for (const name of ["tiny", "tinySwa", "tinyMamba"] as const) {
      const prompt = tokens(name, COMMON + QUESTION);
      const seq = await loaded(name, await saveState(name, prompt));
      reEvaluated[name] = await evaluatedDuring(seq, () => seq.eraseContextTokenRanges([{ start: prompt.length - 1, end: seq.nextTokenIndex }]));
      expect((await greedyGenerate(seq, prompt.slice(-1), GENERATE)).tokens, name).toEqual(await coldReply(name, prompt));
    }
    const n = tokens("tiny", COMMON + QUESTION).length;
    expect(reEvaluated).toEqual({ tiny: 0, tinySwa: 0, tinyMamba: n - 1 });
  });
});

describe("checkpoints survive loadStateFromFile (a node-llama-cpp hazard for a sequence reused across conversations)", () => {
  const A = "Conversation A talks about gardens, flowers, soil and the rain that falls in spring. ".repeat(2);
  const B = "Conversation B is about engines, pistons, fuel and the roads that cars drive on. ".repeat(3);

  /**
   * In ONE sequence: load A and cut it back by 40 (node-llama-cpp re-evaluates and then takes
   * a checkpoint), then load B and cut it back by 40: the reply to a question on B's prefix.
   */
  async function secondConversation(name: Name, clearBeforeLoad: boolean) {
    const a = tokens(name, A);
    const b = tokens(name, B);
    const [pathA, pathB] = [await saveState(name, a), await saveState(name, b)];
    const seq = await freshSequence(name);
    await seq.loadStateFromFile(pathA, { acceptRisk: true });
    await seq.eraseContextTokenRanges([{ start: a.length - 40, end: seq.nextTokenIndex }]);
    const checkpointAfterA = seq.lastCheckpointIndex;
    if (clearBeforeLoad) await seq.clearHistory();
    await seq.loadStateFromFile(pathB, { acceptRisk: true });
    const keep = b.length - 40;
    const reEvaluated = await evaluatedDuring(seq, () => seq.eraseContextTokenRanges([{ start: keep, end: seq.nextTokenIndex }]));
    const question = tokens(name, " What next?");
    const reply = (await greedyGenerate(seq, question, GENERATE)).tokens;
    return { checkpointAfterA, keep, reEvaluated, reply, cold: await coldReply(name, [...b.slice(0, keep), ...question]) };
  }

  it("mamba and gemma3: B's cut restores A's checkpoint (only B's tokens after it are evaluated, on A's state); clearHistory() before the load makes it exact", async () => {
    for (const name of ["tinyMamba", "tinySwa"] as const) {
      const stale = await secondConversation(name, false);
      expect(stale.checkpointAfterA, name).toBeGreaterThan(0);
      // only B's tokens after A's checkpoint were evaluated, on top of A's state
      expect(stale.reEvaluated, name).toBe(stale.keep - stale.checkpointAfterA - 1);
      observe(`${name}: the reply after restoring the other conversation's checkpoint equals cold`, equal(stale.reply, stale.cold));

      const cleared = await secondConversation(name, true);
      expect(cleared.reEvaluated, name).toBe(cleared.keep);
      expect(cleared.reply, name).toEqual(cleared.cold);
    }
  });
});
