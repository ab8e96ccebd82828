/**
 * Whether a loaded state can be cut back to any prefix of its tokens. llama.cpp erases KV
 * cells of attention models, but not the single running state of recurrent models (mamba,
 * rwkv) or the recurrent half of hybrid ones, and a sliding-window cache has already dropped
 * the cells a cut-back prefix would need (unless the context keeps the full cache). Those
 * models may only continue from a state that is wholly a prefix of the prompt.
 */
import type { LlamaContext, LlamaModel } from "node-llama-cpp";

export function canCutState(model: LlamaModel, context: LlamaContext): boolean {
  const insights = model.fileInsights;
  if (insights.isRecurrent || insights.isHybrid) return false;
  const swa = insights.swaSize;
  return swa === undefined || (context as unknown as { _swaFullCache?: boolean })._swaFullCache === true;
}
