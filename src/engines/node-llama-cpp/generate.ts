/**
 * One generation on a node-llama-cpp sequence: evaluate the prompt past the tokens kept,
 * sample until the model ends the reply, a stop text appears, the budget or the context
 * runs out, or the call is aborted (checked after each token).
 */
import type { LlamaContextSequence, LlamaModel, SequenceEvaluateOptions, Token } from "node-llama-cpp";
import { now } from "../shared/clock.js";
import type { CompletionParams } from "./options.js";
import { StopTextStream } from "./stop-text-stream.js";

/** What one generation produced, and why it ended. */
export interface Reply {
  text: string;
  ttftMs: number;
  aborted: boolean;
  completionTokens: number;
  finishReason: "stop" | "length";
}

/** A rendered prompt: its tokens, and the texts the chat wrapper ends a reply with. */
export interface RenderedPrompt {
  tokens: Token[];
  stopTexts: string[];
}

/**
 * Keep the sequence's first `keep` tokens (they must equal the prompt's), evaluate the rest
 * of `prompt` and generate. `started`: when the call's clock started (`ttftMs`).
 */
export async function generateReply(
  model: LlamaModel,
  sequence: LlamaContextSequence,
  prompt: RenderedPrompt,
  keep: number,
  params: CompletionParams,
  started: number,
): Promise<Reply> {
  // Nothing kept: clear (also what a model that cannot erase KV cells supports).
  if (keep === 0) await sequence.clearHistory();
  else if (sequence.nextTokenIndex > keep) await sequence.eraseContextTokenRanges([{ start: keep, end: sequence.nextTokenIndex }]);
  const sampling: SequenceEvaluateOptions = {
    ...(params.temperature !== undefined ? { temperature: params.temperature } : {}),
    ...(params.topK !== undefined ? { topK: params.topK } : {}),
    ...(params.topP !== undefined ? { topP: params.topP } : {}),
    ...(params.minP !== undefined ? { minP: params.minP } : {}),
    ...(params.seed !== undefined ? { seed: params.seed } : {}),
    ...(params.repeatPenalty !== undefined ? { repeatPenalty: params.repeatPenalty } : {}),
  };
  const generated: Token[] = [];
  const stream = new StopTextStream(params.stop?.length ? [...prompt.stopTexts, ...params.stop] : prompt.stopTexts, params.onToken);
  let ttftMs = Number.NaN;
  let aborted = false;
  let finishReason: Reply["finishReason"] = "stop";
  const maxTokens = params.maxTokens ?? Number.POSITIVE_INFINITY;
  const iterator = sequence.evaluate(prompt.tokens.slice(keep), { ...sampling, yieldEogToken: true });
  try {
    for await (const token of iterator) {
      if (Number.isNaN(ttftMs)) ttftMs = now() - started;
      if (model.isEogToken(token)) break;
      generated.push(token);
      if (stream.push(model.detokenize([token], false, generated.slice(-9, -1)))) break; // a stop text
      if (params.signal?.aborted) {
        aborted = true;
        break;
      }
      if (generated.length >= maxTokens || sequence.nextTokenIndex >= sequence.contextSize - 1) {
        finishReason = "length";
        break;
      }
    }
  } finally {
    // Close the generator before anyone saves: the saved tokens are then the ones evaluated.
    await iterator.return();
  }
  // The whole reply detokenized at once (multi-byte characters intact), cut at a stop text.
  const text = stream.finish(model.detokenize(generated));
  return { text, ttftMs, aborted: aborted || params.signal?.aborted === true, completionTokens: generated.length, finishReason };
}
