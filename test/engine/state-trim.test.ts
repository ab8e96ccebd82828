/**
 * The cut-back policy as a pure function. The engine behaviour each rule encodes is probed
 * on real generated models by test/facts/cut-back-facts.test.ts (`npm run facts`); that the
 * adapter keeps to it on the real engine is test/engine/cut-guard.test.ts.
 */
import { describe, expect, it } from "vitest";
import {
  canCutBackToAnyPrefix,
  readStateTrimTraits,
  stateTrimPolicy,
  tokensToReuse,
  type StateTrimTraits,
} from "../../src/engines/node-llama-cpp/state-trim.js";

const attention: StateTrimTraits = { isRecurrent: false, isHybrid: false, swaSize: undefined, swaFullCache: false };
const recurrent: StateTrimTraits = { ...attention, isRecurrent: true };
const hybrid: StateTrimTraits = { ...attention, isHybrid: true };
const sliding: StateTrimTraits = { ...attention, swaSize: 32 };

describe("stateTrimPolicy", () => {
  it("a full-attention model can cut a loaded state back to any prefix", () => {
    expect(stateTrimPolicy(attention)).toEqual({ maxCutBack: Number.POSITIVE_INFINITY });
    expect(canCutBackToAnyPrefix(attention)).toBe(true);
  });

  it("recurrent and hybrid models cannot cut a loaded state back at all", () => {
    expect(stateTrimPolicy(recurrent)).toEqual({ maxCutBack: 0, limitedBy: "recurrent" });
    expect(stateTrimPolicy(hybrid)).toEqual({ maxCutBack: 0, limitedBy: "hybrid" });
    expect(canCutBackToAnyPrefix(recurrent)).toBe(false);
    expect(canCutBackToAnyPrefix(hybrid)).toBe(false);
  });

  it("a sliding-window model can cut a loaded state back by one token, with or without swaFullCache", () => {
    expect(stateTrimPolicy(sliding)).toEqual({ maxCutBack: 1, limitedBy: "sliding-window" });
    // a state file holds only the window whatever the cache size (test/facts/cut-back-facts.test.ts)
    expect(stateTrimPolicy({ ...sliding, swaFullCache: true })).toEqual({ maxCutBack: 1, limitedBy: "sliding-window" });
    expect(canCutBackToAnyPrefix({ ...sliding, swaFullCache: true })).toBe(false);
  });

  it("recurrence wins over a sliding window; a zero window is no window", () => {
    expect(stateTrimPolicy({ ...hybrid, swaSize: 32 }).maxCutBack).toBe(0);
    expect(stateTrimPolicy({ ...recurrent, swaSize: 32 }).limitedBy).toBe("recurrent");
    expect(stateTrimPolicy({ ...attention, swaSize: 0 }).maxCutBack).toBe(Number.POSITIVE_INFINITY);
  });
});

describe("tokensToReuse", () => {
  const prompt = [1, 2, 3, 4, 5, 6, 7, 8];
  const any = stateTrimPolicy(attention);
  const none = stateTrimPolicy(recurrent);
  const one = stateTrimPolicy(sliding);

  it("a proper prefix of the prompt (an exact ancestor) is kept whole by every policy", () => {
    for (const policy of [any, none, one]) expect(tokensToReuse(policy, [1, 2, 3, 4, 5], prompt)).toBe(5);
  });

  it("a longer or diverging state is cut back to the common prefix only when the policy allows the cut", () => {
    const diverging = [1, 2, 3, 4, 5, 9, 9, 9, 9, 9]; // common prefix 5, cut 5
    expect(tokensToReuse(any, diverging, prompt)).toBe(5);
    expect(tokensToReuse(none, diverging, prompt)).toBe(0);
    expect(tokensToReuse(one, diverging, prompt)).toBe(0);
    const oneOff = [1, 2, 3, 4, 5, 6, 9]; // common 6, cut 1
    expect(tokensToReuse(one, oneOff, prompt)).toBe(6);
    expect(tokensToReuse(none, oneOff, prompt)).toBe(0);
  });

  it("leaves at least one prompt token to evaluate: a fully cached prompt costs a cut of one", () => {
    expect(tokensToReuse(any, prompt, prompt)).toBe(7);
    expect(tokensToReuse(one, prompt, prompt)).toBe(7);
    expect(tokensToReuse(none, prompt, prompt)).toBe(0); // recurrent: the cut would re-evaluate everything
    const longer = [...prompt, 10, 11];
    expect(tokensToReuse(any, longer, prompt)).toBe(7);
    expect(tokensToReuse(one, longer, prompt)).toBe(0); // a cut of 3
  });

  it("nothing in common, an empty state or a one-token prompt reuse nothing", () => {
    expect(tokensToReuse(any, [9, 9, 9], prompt)).toBe(0);
    expect(tokensToReuse(any, [], prompt)).toBe(0);
    expect(tokensToReuse(any, [1], [1])).toBe(0);
  });
});

describe("readStateTrimTraits", () => {
  const model = { fileInsights: { isRecurrent: false, isHybrid: false, swaSize: 32 }, defaultContextSwaFullCache: false };

  it("reads the model's insights and takes swaFullCache from the context options, defaulting to the model's default", () => {
    expect(readStateTrimTraits(model)).toEqual({ isRecurrent: false, isHybrid: false, swaSize: 32, swaFullCache: false });
    expect(readStateTrimTraits(model, { swaFullCache: true }).swaFullCache).toBe(true);
    expect(readStateTrimTraits({ ...model, defaultContextSwaFullCache: true }, {}).swaFullCache).toBe(true);
  });
});
