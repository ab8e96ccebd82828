/**
 * How far a state LOADED FROM A FILE can be cut back (node-llama-cpp
 * `eraseContextTokenRanges` from the first differing token to the end) and still be both
 * exact and cheap, decided from the model's architecture. Pure: no I/O and no
 * node-llama-cpp import. The facts behind each rule are probed by
 * test/facts/cut-back-facts.test.ts (`npm run facts`) and written up in test/fixtures/ENGINE-FACTS.md
 * ("Models that cannot cut a state back"); measured on node-llama-cpp 3.22.1.
 * test/engine/cut-guard.test.ts pins that the adapter never asks for a longer cut.
 *
 * - Attention with a full KV cache (llama and most models): any prefix. The erase drops
 *   cells and nothing is re-evaluated.
 * - Recurrent (mamba, rwkv) and hybrid models hold one state per sequence, not one cell per
 *   token. llama.cpp refuses the erase, and node-llama-cpp then silently re-evaluates the
 *   whole kept prefix from token 0: the output is right, the load was wasted. So only a
 *   state whose tokens are all a proper prefix of the prompt helps (nothing is erased).
 * - Sliding-window attention (gemma 2/3, cohere2, gpt-oss, ...): a state file holds only the
 *   last `swaSize` positions of the sliding-window layers, with or without `swaFullCache`.
 *   Cutting 1 token back is exact. Cutting 2..swaSize-1 tokens back is SILENTLY WRONG:
 *   node-llama-cpp keeps the cells and the next tokens attend to an incomplete window.
 *   Cutting swaSize or more re-evaluates the kept prefix from token 0.
 *
 * These rules are for a state just loaded from a file. A live sequence that evaluated its
 * tokens itself holds more: the cache keeps up to ~swaSize + batch cells, and node-llama-cpp
 * re-evaluates when a cut goes below them.
 */

/** What decides how a loaded state can be cut back: node-llama-cpp's `model.fileInsights` and the context option. */
export interface StateTrimTraits {
  /** `model.fileInsights.isRecurrent` (mamba, mamba2, rwkv6/7, ...). */
  readonly isRecurrent: boolean;
  /** `model.fileInsights.isHybrid` (jamba, granite-hybrid, lfm2, qwen3next, ...). */
  readonly isHybrid: boolean;
  /** `model.fileInsights.swaSize`: the sliding window in tokens, undefined without one. */
  readonly swaSize: number | undefined;
  /**
   * The context's `swaFullCache` option. Taken so a caller states it, but it does not change
   * the answer: a state file holds only the window either way (measured).
   */
  readonly swaFullCache: boolean;
}

export type StateTrimLimit = "recurrent" | "hybrid" | "sliding-window";

export interface StateTrimPolicy {
  /**
   * The most tokens a loaded state may be cut back by, exactly and without re-evaluation:
   * `Infinity` (any prefix), 1 (sliding window) or 0 (recurrent, hybrid).
   */
  readonly maxCutBack: number;
  /** Why the cut is limited; absent when any prefix can be kept. */
  readonly limitedBy?: StateTrimLimit;
}

export function stateTrimPolicy(traits: StateTrimTraits): StateTrimPolicy {
  // recurrent/hybrid first: a hybrid model with a sliding window is still limited to 0
  if (traits.isRecurrent) return { maxCutBack: 0, limitedBy: "recurrent" };
  if (traits.isHybrid) return { maxCutBack: 0, limitedBy: "hybrid" };
  // swaFullCache deliberately ignored: it sizes the cache, not what a state file holds
  if (traits.swaSize !== undefined && traits.swaSize > 0) return { maxCutBack: 1, limitedBy: "sliding-window" };
  return { maxCutBack: Number.POSITIVE_INFINITY };
}

/** Whether a loaded state can be cut back to an arbitrary prefix of itself. */
export function canCutBackToAnyPrefix(traits: StateTrimTraits): boolean {
  return stateTrimPolicy(traits).maxCutBack === Number.POSITIVE_INFINITY;
}

/**
 * How many leading tokens of a loaded state holding `cached` to keep for `prompt`: the
 * common prefix, leaving at least one prompt token to evaluate (logits are not in a state
 * file). 0 means the state is of no use: loading it would cost more than starting cold, or
 * (sliding window) give wrong output. The caller erases `[result, cached.length)`.
 */
export function tokensToReuse(policy: StateTrimPolicy, cached: readonly number[], prompt: readonly number[]): number {
  let common = 0;
  const limit = Math.min(cached.length, prompt.length);
  while (common < limit && cached[common] === prompt[common]) common++;
  const keep = Math.min(common, prompt.length - 1);
  if (keep <= 0) return 0;
  return cached.length - keep <= policy.maxCutBack ? keep : 0;
}

/** The parts of a node-llama-cpp `LlamaModel` the traits are read from (structural: no import). */
export interface TrimTraitsModel {
  readonly fileInsights: { readonly isRecurrent: boolean; readonly isHybrid: boolean; readonly swaSize: number | undefined };
  readonly defaultContextSwaFullCache: boolean;
}

/**
 * Read the traits from a loaded model and the options its context was (or will be) created
 * with; `LlamaContext` does not expose `swaFullCache`, so it comes from those options,
 * defaulting as node-llama-cpp does to `model.defaultContextSwaFullCache`.
 */
export function readStateTrimTraits(model: TrimTraitsModel, contextOptions: { readonly swaFullCache?: boolean | undefined } = {}): StateTrimTraits {
  const { isRecurrent, isHybrid, swaSize } = model.fileInsights;
  return { isRecurrent, isHybrid, swaSize, swaFullCache: contextOptions.swaFullCache ?? model.defaultContextSwaFullCache };
}
