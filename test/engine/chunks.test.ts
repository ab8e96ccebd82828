/**
 * Token chunks on the real engine (node-llama-cpp 3.22.1, generated models): for every KV
 * configuration kvkeep may split — F16 with flash attention off (V transposed) and on, Q8_0
 * K and V (flash attention on, Hadamard rotation on: head dim 64), Q8_0 K with a transposed
 * F16 V — a state splits and joins back byte-identically, a cut at M is what llama.cpp saves
 * at M, one conversation's shared-prefix chunks joined with another's rest are the other's
 * state, and a joined state loaded through a memory file generates what a cold run does.
 *
 * Every reference is the same engine's own output in the same run: a cut is compared with a
 * save of the same sequence at that point, shared chunks with a second sequence that
 * evaluated the prefix in the same steps, replies with a cold prefill. Nothing assumes
 * numerics that hold only on this CPU.
 */
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { LlamaContext, LlamaContextOptions, LlamaContextSequence, LlamaModel, Token } from "node-llama-cpp";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { chunkChain, stateContext } from "../../src/chunks/chunk-id.js";
import { isStateFormatError } from "../../src/chunks/errors.js";
import { cutSeqState, joinSeqState, joinSeqStateParts, parseSeqState, splitSeqState, truncateChunk, withPlacement } from "../../src/chunks/state-format.js";
import { loadNativeFs } from "../../src/native/index.js";
import type { MemoryFile } from "../../src/native/types.js";
import { createContext, greedyGenerate, loadFixtureModel } from "../fixtures/engine.js";

/** The handoff needs the native addon on Linux; elsewhere the store keeps whole files. */
const noMemoryFiles = process.env.KVKEEP_NO_NATIVE === "1" || process.platform !== "linux";
let dir: string;
let files = 0;
const contexts: LlamaContext[] = [];

beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), "kvkeep-chunks-engine-"));
});

afterAll(async () => {
  for (const c of contexts) if (!c.disposed) await c.dispose();
  rmSync(dir, { recursive: true, force: true });
});

type ContextOptions = Omit<LlamaContextOptions, "contextSize" | "threads">;

interface Config {
  readonly name: string;
  readonly model: () => Promise<LlamaModel>;
  readonly options: ContextOptions;
  readonly expect: { vTrans: boolean; kType: number; vType: number };
}

/** tiny with 2 heads of 64: a KV row of 64 elements takes Q8_0 (32-element blocks), and head dim 64 turns llama.cpp's rotation on. */
const tinyHeadDim64 = async (): Promise<LlamaModel> =>
  (await loadFixtureModel("tiny", { overrides: { name: "tiny-hd64", embeddingLength: 128, headCount: 2, headCountKv: 1, feedForwardLength: 256 } })).model;
const tiny = async (): Promise<LlamaModel> => (await loadFixtureModel("tiny")).model;

const F16 = 1;
const Q8_0 = 8;
const CONFIGS: Config[] = [
  { name: "F16, flash attention off (V transposed)", model: tiny, options: { flashAttention: false }, expect: { vTrans: true, kType: F16, vType: F16 } },
  { name: "F16, flash attention on", model: tiny, options: { flashAttention: true }, expect: { vTrans: false, kType: F16, vType: F16 } },
  {
    name: "Q8_0 K and V, flash attention on, rotation on",
    model: tinyHeadDim64,
    options: { flashAttention: true, experimentalKvCacheKeyType: "Q8_0", experimentalKvCacheValueType: "Q8_0" },
    expect: { vTrans: false, kType: Q8_0, vType: Q8_0 },
  },
  {
    name: "Q8_0 K with an F16 V, flash attention off (V transposed)",
    model: tinyHeadDim64,
    options: { flashAttention: false, experimentalKvCacheKeyType: "Q8_0" },
    expect: { vTrans: true, kType: Q8_0, vType: F16 },
  },
];

async function sequence(model: LlamaModel, options: ContextOptions & { sequences?: number } = {}): Promise<LlamaContextSequence> {
  // one thread: tiny models, and llama.cpp's spinning pool is far slower on a loaded machine (ENGINE-FACTS.md)
  const context = await createContext(model, { contextSize: 2048, threads: 1, ...options });
  contexts.push(context);
  return context.getSequence();
}

async function save(seq: LlamaContextSequence): Promise<Buffer> {
  const path = join(dir, `state-${files++}.bin`);
  await seq.saveStateToFile(path);
  return readFileSync(path);
}

/**
 * Evaluate `tokens` in steps ending at each of `stops` (then to the end), saving the state at
 * every stop: the engine's own state of each prefix, for cut references. Two sequences that
 * evaluate a prefix in the same steps hold the same KV for it.
 */
async function evaluateInSteps(seq: LlamaContextSequence, tokens: readonly Token[], stops: readonly number[]): Promise<Map<number, Buffer>> {
  const saved = new Map<number, Buffer>();
  let at = 0;
  for (const stop of [...stops, tokens.length]) {
    if (stop > at) await seq.evaluateWithoutGeneratingNewTokens(tokens.slice(at, stop));
    at = stop;
    saved.set(stop, await save(seq));
  }
  return saved;
}

const GENERATE = 16;
/** ~560 characters (one token each on the byte-level fixtures): two full 256-token chunks and part of a third. */
const PREFIX =
  "You are the assistant of a small bakery. The bakery opens at seven, closes at six, and sells bread, " +
  "pastries and coffee. Answer briefly and politely; if you do not know something, say so and suggest " +
  "calling the shop. Prices: a loaf of sourdough costs four euros, a croissant one euro fifty, a coffee " +
  "two euros. The bakery is closed on Mondays and on public holidays. Orders for cakes must be placed two " +
  "days in advance. Gluten-free bread is baked on Thursdays only. The owner is called Marta. Deliveries " +
  "are possible within the town for orders above twenty euros.\nUser: ";
/** Each long enough that the third chunk (tokens 512..767) ends inside it: the first chunk the two do not share. */
const ASK_A =
  "When can I buy gluten-free bread, and do you deliver to the station? I would also like to order a birthday " +
  "cake for Saturday, with strawberries and cream, for about twelve people. What would that cost, and when do " +
  "I need to order it by? Thank you very much for your help.\nAssistant:";
const ASK_B =
  "How much are two croissants and a coffee? And is the bakery open on Easter Monday? My sister says you are, " +
  "but I think you close on public holidays. Also, can I pay by card, or only in cash? Sorry for all these " +
  "questions, I am new in town and want to get it right.\nAssistant:";

describe.each(CONFIGS)("chunks on the real engine: $name", (config) => {
  let model: LlamaModel;
  let prefix: Token[];
  let a: Token[];
  let b: Token[];
  let stopsA: number[];
  let statesA: Map<number, Buffer>;
  let stateB: Buffer;

  beforeAll(async () => {
    model = await config.model();
    prefix = model.tokenize(PREFIX);
    a = [...prefix, ...model.tokenize(ASK_A)];
    b = [...prefix, ...model.tokenize(ASK_B)];
    expect(prefix.length).toBeGreaterThan(512);
    expect(prefix.length).toBeLessThan(768);
    // the prefix is evaluated in the same steps in both conversations; A also stops at chunk edges
    stopsA = [1, 255, 256, 257, 511, prefix.length, prefix.length + 37];
    statesA = await evaluateInSteps(await sequence(model, config.options), a, stopsA);
    // B is saved without its last token: a resumed turn evaluates at least one (logits are not in a state)
    const seqB = await sequence(model, config.options);
    await evaluateInSteps(seqB, b.slice(0, -1), [1, 255, 256, 257, 511, prefix.length]);
    stateB = await save(seqB);
  });

  it("the engine writes magic ggsq and version 3, in the layout kvkeep parses", () => {
    const state = statesA.get(a.length)!;
    expect(state.subarray(0, 8).toString("hex")).toBe("7173676703000000");
    const layout = parseSeqState(state);
    expect(layout.tokenCount).toBe(a.length);
    expect(Array.from(layout.tokens)).toEqual(a);
    expect(layout.placement).toEqual({ nStream: 1, streamIndex: 0, seqId: 0 });
    expect(layout.positionsAreIndexes).toBe(true);
    expect(layout.geometry!.vTrans).toBe(config.expect.vTrans);
    expect(layout.geometry!.layers.map((l) => [l.kType, l.vType])).toEqual(layout.geometry!.layers.map(() => [config.expect.kType, config.expect.vType]));
  });

  it("split and join give back the very bytes the engine saved, at every length and chunk size", () => {
    for (const [length, state] of [...statesA, [b.length - 1, stateB] as const]) {
      for (const chunkTokens of [256, 7]) {
        const { chunks, tail, layout } = splitSeqState(state, { chunkTokens });
        expect(chunks).toHaveLength(Math.floor(length / chunkTokens));
        const joined = joinSeqState({ geometry: layout.geometry, pieces: [...chunks, tail], verifyChecksums: true });
        expect(joined.equals(state), `${length} tokens, chunks of ${chunkTokens}`).toBe(true);
      }
    }
  });

  it("a cut at M is byte-identical to the engine's own save after evaluating M tokens, from the state or from its chunks", () => {
    const full = statesA.get(a.length)!;
    const { chunks, tail, layout } = splitSeqState(full, { chunkTokens: 256 });
    const all = [...chunks, tail];
    for (const m of stopsA) {
      expect(cutSeqState(full, m).equals(statesA.get(m)!), `M = ${m}`).toBe(true);
      // a borrow's read: the chunks before M, and the one holding M cut to it
      const k = Math.floor(m / 256);
      const pieces = all.slice(0, k);
      if (m % 256 !== 0) pieces.push(truncateChunk(all[k]!, layout.geometry, m % 256));
      expect(joinSeqState({ geometry: layout.geometry, pieces }).equals(statesA.get(m)!), `M = ${m} from chunks`).toBe(true);
    }
  });

  it("conversation A's shared-prefix chunks joined with B's own chunks and tail are B's state, byte for byte", () => {
    const context = stateContext({
      modelFingerprint: "test",
      geometry: parseSeqState(stateB).geometry!,
      attentionRotation: "default",
      sequences: 1,
      chunkTokens: 256,
    });
    const idsA = chunkChain(context, a);
    const idsB = chunkChain(context, b.slice(0, -1));
    const shared = Math.floor(prefix.length / 256);
    expect(shared).toBe(2);
    expect(idsA.slice(0, shared)).toEqual(idsB.slice(0, shared));
    expect(idsA[shared]).not.toBe(idsB[shared]);

    const splitA = splitSeqState(statesA.get(a.length)!, { chunkTokens: 256 });
    const splitB = splitSeqState(stateB, { chunkTokens: 256 });
    for (let i = 0; i < shared; i++) expect(splitA.chunks[i]!.equals(splitB.chunks[i]!), `chunk ${i}`).toBe(true);
    const joined = joinSeqState({ geometry: splitB.layout.geometry, pieces: [...splitA.chunks.slice(0, shared), ...splitB.chunks.slice(shared), splitB.tail] });
    expect(joined.equals(stateB)).toBe(true);
  });

  it.skipIf(noMemoryFiles)("a joined state handed to the engine through a memory file generates the cold reply", async () => {
    const fs = loadNativeFs();
    const file: MemoryFile | null = fs.createMemoryFile("kvkeep-chunks-test");
    expect(file, `no memory file on ${fs.kind}`).not.toBeNull();
    try {
      const splitA = splitSeqState(statesA.get(a.length)!);
      const splitB = splitSeqState(stateB);
      const { parts } = joinSeqStateParts({ geometry: splitB.layout.geometry, pieces: [...splitA.chunks.slice(0, 2), ...splitB.chunks.slice(2), splitB.tail] });
      await file!.write(parts);
      const resumed = await sequence(model, config.options);
      await resumed.loadStateFromFile(file!.path, { acceptRisk: true });
      expect(resumed.contextTokens).toEqual(b.slice(0, -1));
      const reply = await greedyGenerate(resumed, b.slice(-1), GENERATE);
      const cold = await greedyGenerate(await sequence(model, config.options), b, GENERATE);
      expect(reply.tokens).toHaveLength(cold.tokens.length);
      expect(model.detokenize(reply.tokens)).toBe(model.detokenize(cold.tokens));
    } finally {
      file?.close();
    }
  });
});

/** node-llama-cpp keeps the sequence id internal (`_sequenceId`); the saved state's cells say it too. */
function sequenceIdOf(seq: LlamaContextSequence): number {
  return (seq as unknown as { _sequenceId: number })._sequenceId;
}

describe("the stream count on the real engine", () => {
  it("a state saved from sequence 1 of a two-sequence context, rewritten for one sequence, resumes with the cold reply; chunks of a one-sequence state joined for sequence 1 do too", async () => {
    const model = await tiny();
    const tokens = model.tokenize(`${PREFIX}${ASK_B}`);
    const cold = await greedyGenerate(await sequence(model), tokens, GENERATE);

    // a two-sequence context's first sequence is 0; the one after it is 1
    const first = await sequence(model, { sequences: 2 });
    const other = first.context.getSequence();
    expect(sequenceIdOf(other)).toBe(1);
    await other.evaluateWithoutGeneratingNewTokens(tokens.slice(0, -1));
    const saved = await save(other);
    expect(parseSeqState(saved).placement).toEqual({ nStream: 2, streamIndex: 1, seqId: 1 });

    const single = withPlacement(saved, { nStream: 1, seqId: 0 });
    const path = join(dir, `state-${files++}.bin`);
    writeFileSync(path, single);
    const resumed = await sequence(model);
    await resumed.loadStateFromFile(path, { acceptRisk: true });
    expect(model.detokenize((await greedyGenerate(resumed, tokens.slice(-1), GENERATE)).tokens)).toBe(model.detokenize(cold.tokens));

    // and back: the one-sequence state's chunks, joined for sequence 1 of a two-sequence context
    const { chunks, tail, layout } = splitSeqState(single);
    const forTwo = joinSeqState({ geometry: layout.geometry, pieces: [...chunks, tail], placement: { nStream: 2, seqId: 1 } });
    expect(forTwo.equals(saved)).toBe(true);
    const target = (await sequence(model, { sequences: 2 })).context.getSequence();
    expect(sequenceIdOf(target)).toBe(1);
    const path2 = join(dir, `state-${files++}.bin`);
    writeFileSync(path2, forTwo);
    await target.loadStateFromFile(path2, { acceptRisk: true });
    expect(model.detokenize((await greedyGenerate(target, tokens.slice(-1), GENERATE)).tokens)).toBe(model.detokenize(cold.tokens));
  });
});

describe("states kvkeep never splits, from the real engine", () => {
  async function stateOf(name: "tinySwa" | "tinyMamba", options: { swaFullCache?: boolean } = {}): Promise<Buffer> {
    const model = (await loadFixtureModel(name)).model;
    const seq = await sequence(model, options);
    await seq.evaluateWithoutGeneratingNewTokens(model.tokenize(PREFIX));
    return save(seq);
  }

  it("a sliding-window model's state (two KV sections) is refused, with or without the full SWA cache", async () => {
    for (const swaFullCache of [false, true]) {
      const state = await stateOf("tinySwa", { swaFullCache });
      let caught: unknown;
      try {
        splitSeqState(state);
      } catch (error) {
        caught = error;
      }
      expect(isStateFormatError(caught, "STATE_TRAILING_BYTES"), String(caught)).toBe(true);
    }
  });

  it("a recurrent model's state is refused", async () => {
    const state = await stateOf("tinyMamba");
    let caught: unknown;
    try {
      splitSeqState(state);
    } catch (error) {
      caught = error;
    }
    expect(isStateFormatError(caught), String(caught)).toBe(true);
  });
});
