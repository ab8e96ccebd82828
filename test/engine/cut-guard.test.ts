/**
 * kvkeep's guards against node-llama-cpp's hazards when a state is cut back or loaded
 * (written up in test/fixtures/ENGINE-FACTS.md §6, probed by `npm run facts`):
 *
 * - a loaded sliding-window (gemma3) state cut back by 2..swaSize-1 tokens is silently
 *   wrong, and a recurrent (mamba) one cannot be cut at all: the adapter never asks for a
 *   cut beyond its policy (`stateTrimPolicy`: 1 token, 0 tokens);
 * - node-llama-cpp keeps a sequence's checkpoints across `loadStateFromFile`, so a cut
 *   after loading could restore another conversation's: the adapter loads only into an
 *   empty sequence.
 *
 * Every cut, clear and load the adapter makes is recorded on node-llama-cpp's own
 * `LlamaContextSequence` (the real engine, observed, nothing replaced). One adapter — one
 * sequence — serves several conversations in turn, so loads land on a used sequence, and
 * the turns include a regenerate and an edit of the last message, which need cuts of
 * many tokens. The llama model runs the same turns as the control: there the adapter does
 * cut by many tokens, so the limit seen on the others is the policy, not the scenario.
 * Every reply equals a cold run's (greedy).
 */
import { LlamaContextSequence, type LlamaModel } from "node-llama-cpp";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createLlamaCppCompletion } from "../../src/engines/node-llama-cpp/index.js";
import { readStateTrimTraits, stateTrimPolicy } from "../../src/engines/node-llama-cpp/state-trim.js";
import { type CacheMessage, openKvCacheStore } from "../../src/index.js";
import { coldGreedyReply, loadFixtureModel, type ChatMessage } from "../fixtures/engine.js";
import { MODEL_SHAPES } from "../fixtures/gguf/models.js";
import { tempDir } from "../helpers/temp-root.js";

const MAX = 12;
const CONTEXT = 1024;

type Event =
  | { readonly kind: "erase"; readonly removed: number; readonly afterLoad: boolean }
  | { readonly kind: "load"; readonly heldTokens: number; readonly usedBefore: boolean };

const events: Event[] = [];
const loaded = new WeakSet<LlamaContextSequence>();
const used = new WeakSet<LlamaContextSequence>();
const proto = LlamaContextSequence.prototype;
const original = { erase: proto.eraseContextTokenRanges, clear: proto.clearHistory, load: proto.loadStateFromFile };

beforeAll(() => {
  proto.eraseContextTokenRanges = async function (this: LlamaContextSequence, ranges) {
    for (const r of ranges) {
      const removed = Math.min(r.end, this.nextTokenIndex) - r.start;
      if (removed > 0) events.push({ kind: "erase", removed, afterLoad: loaded.has(this) });
    }
    return original.erase.call(this, ranges);
  };
  proto.clearHistory = async function (this: LlamaContextSequence) {
    loaded.delete(this);
    if (this.nextTokenIndex > 0) used.add(this);
    return original.clear.call(this);
  };
  proto.loadStateFromFile = async function (this: LlamaContextSequence, ...args: Parameters<typeof original.load>) {
    events.push({ kind: "load", heldTokens: this.contextTokens.length, usedBefore: used.has(this) || this.nextTokenIndex > 0 });
    const result = await original.load.apply(this, args);
    loaded.add(this);
    used.add(this);
    return result;
  };
});

afterAll(() => {
  proto.eraseContextTokenRanges = original.erase;
  proto.clearHistory = original.clear;
  proto.loadStateFromFile = original.load;
});

const S: CacheMessage = { role: "system", content: "You answer in one short sentence." };
const U1: CacheMessage = { role: "user", content: "Where does the river go at night when nobody watches it?" };
const U2: CacheMessage = { role: "user", content: "What colour is the wind over the old harbour?" };
const U3: CacheMessage = { role: "user", content: "And in the morning, where has it gone?" };
const U3b: CacheMessage = { role: "user", content: "And at noon, where has it gone to, then?" };

/** The turns, on ONE adapter; each reply is checked against a cold run. */
async function runScenario(model: LlamaModel): Promise<{ events: Event[]; mismatches: string[] }> {
  events.length = 0;
  const store = openKvCacheStore({ root: tempDir() });
  const adapter = createLlamaCppCompletion({ model, store, contextSize: CONTEXT, threads: 1 });
  const mismatches: string[] = [];
  const turn = async (label: string, history: CacheMessage[], kvCache: string | boolean): Promise<string> => {
    const { text } = await adapter.completion({ history, kvCache, maxTokens: MAX, temperature: 0 });
    const cold = await coldGreedyReply(model, history as ChatMessage[], { contextSize: CONTEXT, maxTokens: MAX });
    if (text !== cold) mismatches.push(`${label}: ${JSON.stringify(text)} != cold ${JSON.stringify(cold)}`);
    return text;
  };
  try {
    const a1 = await turn("a, turn 1", [S, U1], "a");
    await turn("b, turn 1 (the sequence held a)", [S, U2], "b");
    const history = [S, U1, { role: "assistant", content: a1 }, U3];
    await turn("a, turn 2 (a's state loaded over b's)", history, "a");
    await turn("a, regenerate", history, "a");
    await turn("a, the last message edited", [...history.slice(0, -1), U3b], "a");
    await turn("auto, same history as a's turn 2", history, true);
  } finally {
    await adapter.dispose();
    await store.close();
  }
  return { events: [...events], mismatches };
}

describe("cuts and loads the node-llama-cpp adapter asks of the engine", () => {
  it("llama (the control): the same turns cut loaded states back by many tokens, and reply as cold runs", async () => {
    const { model } = await loadFixtureModel("tiny");
    expect(stateTrimPolicy(readStateTrimTraits(model)).maxCutBack).toBe(Number.POSITIVE_INFINITY);
    const { events: seen, mismatches } = await runScenario(model);
    expect(mismatches).toEqual([]);
    expect(seen.some((e) => e.kind === "erase" && e.afterLoad && e.removed > 1)).toBe(true);
    expect(seen.filter((e) => e.kind === "load").length).toBeGreaterThan(0);
  }, 180_000);

  for (const [name, maxCutBack, limitedBy] of [
    ["tinySwa", 1, "sliding-window"],
    ["tinyMamba", 0, "recurrent"],
  ] as const) {
    it(`${name}: the policy is read from the real model (${limitedBy}, at most ${maxCutBack}), and no cut the adapter asks is longer; every load lands on an emptied sequence; replies as cold runs`, async () => {
      const { model } = await loadFixtureModel(name);
      expect(stateTrimPolicy(readStateTrimTraits(model))).toEqual({ maxCutBack, limitedBy });
      const { events: seen, mismatches } = await runScenario(model);
      expect(mismatches).toEqual([]);
      const cuts = seen.filter((e) => e.kind === "erase");
      expect(cuts.filter((e) => e.removed > maxCutBack)).toEqual([]);
      const loads = seen.filter((e) => e.kind === "load");
      // the scenario loads a conversation's state into the sequence that served another one
      expect(loads.some((e) => e.usedBefore)).toBe(true);
      expect(loads.filter((e) => e.heldTokens > 0)).toEqual([]);
    }, 180_000);
  }

  it("swaFullCache does not widen the limit: a state file holds only the window either way", async () => {
    const { model } = await loadFixtureModel("tinySwa");
    expect(model.fileInsights.swaSize).toBe(MODEL_SHAPES.tinySwa.slidingWindow);
    expect(stateTrimPolicy(readStateTrimTraits(model, { swaFullCache: true }))).toEqual({ maxCutBack: 1, limitedBy: "sliding-window" });
  });
});
