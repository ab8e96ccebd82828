/**
 * One generation on a node-llama-cpp sequence: evaluate the prompt past the tokens kept,
 * sample until the model ends the reply, a stop text appears, the budget or the context
 * runs out, or the call is aborted (checked after each token).
 *
 * A reply may be constrained (see reply-plan.ts): JSON for a schema (`responseFormat`), or
 * tool calls in the chat wrapper's own syntax. Then the reply is made of steps, each either
 * text the wrapper's syntax fixes (a call's prefix, a forced tool's name, the brackets around
 * its arguments) — evaluated as if the model had written it — or tokens sampled under a
 * grammar (a tool's name among the tools, arguments valid for its schema) until the grammar
 * is complete (the sampler then allows only the end-of-generation token, which is never
 * evaluated). The sequence ends up holding exactly the tokens of the reply, so the next turn,
 * which renders the same call from the history, reuses all of them.
 */
import {
  LlamaGrammarEvaluationState,
  type LlamaContextSequence,
  type LlamaGrammar,
  type LlamaModel,
  LlamaText,
  type SequenceEvaluateOptions,
  type Token,
} from "node-llama-cpp";
import { randomBytes } from "node:crypto";
import { now } from "../shared/clock.js";
import type { ToolCall } from "../shared/stats.js";
import type { CompletionParams } from "./options.js";
import type { ReplyPlan, ToolPlan } from "./reply-plan.js";
import { StopTextStream } from "./stop-text-stream.js";

/** What one generation produced, and why it ended. */
export interface Reply {
  text: string;
  ttftMs: number;
  aborted: boolean;
  completionTokens: number;
  finishReason: "stop" | "length";
  /** The tools the reply calls (complete calls only: one cut by the budget is dropped). */
  toolCalls: ToolCall[];
}

/** A rendered prompt: its tokens, and the texts the chat wrapper ends a reply with. */
export interface RenderedPrompt {
  tokens: Token[];
  stopTexts: string[];
}

/** Why a sampling step ended. */
type StepEnd = "eog" | "stopped" | "length" | "aborted" | "stop";

/** A tool call's id, as OpenAI makes them. */
export function newToolCallId(): string {
  return `call_${randomBytes(12).toString("base64url")}`;
}

/** The sequence, the budget, the clock and the reply's tokens of one generation. */
class Generation {
  /** The reply's tokens, in order: sampled and written (never an end-of-generation token). */
  readonly tokens: Token[] = [];
  ttftMs = Number.NaN;
  readonly #maxTokens: number;
  readonly #sampling: SequenceEvaluateOptions;
  /** Tokens to evaluate before the next sample: the prompt's rest, then tokens the syntax writes. */
  #input: Token[];

  constructor(
    readonly model: LlamaModel,
    readonly sequence: LlamaContextSequence,
    readonly params: CompletionParams,
    readonly started: number,
    promptRest: Token[],
  ) {
    this.#input = promptRest;
    this.#maxTokens = params.maxTokens ?? Number.POSITIVE_INFINITY;
    this.#sampling = {
      ...(params.temperature !== undefined ? { temperature: params.temperature } : {}),
      ...(params.topK !== undefined ? { topK: params.topK } : {}),
      ...(params.topP !== undefined ? { topP: params.topP } : {}),
      ...(params.minP !== undefined ? { minP: params.minP } : {}),
      ...(params.seed !== undefined ? { seed: params.seed } : {}),
      ...(params.repeatPenalty !== undefined ? { repeatPenalty: params.repeatPenalty } : {}),
    };
  }

  get aborted(): boolean {
    return this.params.signal?.aborted === true;
  }

  /**
   * Add tokens the reply's syntax fixes (evaluated by the next `sample` or `flush`, as if the
   * model had written them); false, adding nothing, when they do not fit the budget or context.
   */
  write(tokens: readonly Token[]): boolean {
    const pending = this.#input.length + tokens.length;
    if (this.tokens.length + tokens.length > this.#maxTokens || this.sequence.nextTokenIndex + pending >= this.sequence.contextSize - 1) return false;
    this.tokens.push(...tokens);
    this.#input = [...this.#input, ...tokens];
    return true;
  }

  /**
   * Evaluate the pending input, then sample — under `grammar`, if given — until the model ends
   * (or the grammar is complete: "eog"), `onToken` returns true ("stopped": the token is in
   * `tokens` but was never evaluated), the budget or context runs out ("length": likewise), or
   * the call is aborted.
   */
  async sample(grammar: LlamaGrammar | null, onToken: (token: Token) => boolean): Promise<StepEnd> {
    let input = this.#input;
    this.#input = [];
    if (input.length === 0) {
      // Nothing new since the last step: evaluate its last token again (its logits were used).
      const end = this.sequence.nextTokenIndex;
      input = [this.sequence.contextTokens.at(-1)!];
      await this.sequence.eraseContextTokenRanges([{ start: end - 1, end }]);
    }
    const iterator = this.sequence.evaluate(input, {
      ...this.#sampling,
      ...(grammar ? { grammarEvaluationState: new LlamaGrammarEvaluationState({ model: this.model, grammar }) } : {}),
      yieldEogToken: true,
    });
    try {
      for await (const token of iterator) {
        if (Number.isNaN(this.ttftMs)) this.ttftMs = now() - this.started;
        if (this.model.isEogToken(token)) return "eog";
        this.tokens.push(token);
        if (onToken(token)) return "stopped";
        if (this.aborted) return "aborted";
        if (this.tokens.length >= this.#maxTokens || this.sequence.nextTokenIndex >= this.sequence.contextSize - 1) return "length";
      }
      return "eog";
    } finally {
      // Close the generator before anyone saves: the saved tokens are then the ones evaluated.
      await iterator.return();
    }
  }

  /** Evaluate what is pending without sampling after it (the reply ends with it). */
  async flush(): Promise<void> {
    const input = this.#input;
    this.#input = [];
    if (input.length > 0) await this.sequence.evaluateWithoutGeneratingNewTokens(input);
  }

  /** The last token was sampled but is not the reply's (the syntax writes what follows): forget it. */
  dropLast(): void {
    this.tokens.pop();
  }

  detokenize(tokens: readonly Token[], special = false): string {
    return this.model.detokenize(tokens, special);
  }
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
  plan: ReplyPlan = { kind: "text" },
): Promise<Reply> {
  // Nothing kept: clear (also what a model that cannot erase KV cells supports).
  if (keep === 0) await sequence.clearHistory();
  else if (sequence.nextTokenIndex > keep) await sequence.eraseContextTokenRanges([{ start: keep, end: sequence.nextTokenIndex }]);
  const run = new Generation(model, sequence, params, started, prompt.tokens.slice(keep));
  const done = ([text, end, toolCalls]: [string, StepEnd, ToolCall[]]): Reply => ({
    text,
    ttftMs: run.ttftMs,
    aborted: end === "aborted" || run.aborted,
    completionTokens: run.tokens.length,
    finishReason: end === "length" ? "length" : "stop",
    toolCalls,
  });

  if (plan.kind === "tools" && plan.forced !== null) return done(await writeCalls(run, "", plan, false));

  // Text (and, with tools in auto mode, a call the model starts on its own).
  const stopTexts = params.stop?.length ? [...prompt.stopTexts, ...params.stop] : [...prompt.stopTexts];
  const detecting = plan.kind === "tools" && plan.auto ? plan.syntax.prefixes : [];
  // With tools the text is read with special tokens: a call's prefix may be one.
  const special = detecting.length > 0;
  const stream = new StopTextStream([...stopTexts, ...detecting], params.onToken);
  const end = await run.sample(plan.kind === "json" ? plan.grammar.grammar : null, (token) =>
    stream.push(model.detokenize([token], special, run.tokens.slice(-9, -1))),
  );
  // The whole reply detokenized at once (multi-byte characters intact), cut at a stop text.
  const full = run.detokenize(run.tokens, special);
  const callAt = end === "stopped" && plan.kind === "tools" ? firstIndex(full, detecting) : null;
  if (callAt === null || plan.kind !== "tools" || (firstIndex(full, stopTexts)?.index ?? Number.POSITIVE_INFINITY) < callAt.index) {
    let text = stream.finish(full);
    if (plan.kind === "json" && plan.grammar.terminator && text.endsWith(plan.grammar.terminator)) text = text.slice(0, -plan.grammar.terminator.length).trimEnd();
    return done([text, end, []]);
  }
  // The model began a call: its text is what came before. The token that completed the prefix
  // was never evaluated: drop it, and write the rest of the prefix as the syntax has it.
  const content = stream.finish(full);
  run.dropLast();
  const written = run.detokenize(run.tokens, true).slice(callAt.index);
  const rest = plan.syntax.prefixText.startsWith(written) ? sliceText(plan.syntax.prefix, written.length) : plan.syntax.prefix;
  if (!run.write(rest.tokenize(model.tokenizer))) return done([content, "length", []]);
  return done(await writeCalls(run, content, plan, true));
}

/** The earliest occurrence in `text` of any of `needles`. */
function firstIndex(text: string, needles: readonly string[]): { index: number; needle: string } | null {
  let best: { index: number; needle: string } | null = null;
  for (const needle of needles) {
    const index = text.indexOf(needle);
    if (index >= 0 && (best === null || index < best.index)) best = { index, needle };
  }
  return best;
}

/** `text` from the `from`-th character of its `toString()` on, special tokens' text kept whole where cut inside. */
export function sliceText(text: LlamaText, from: number): LlamaText {
  const out: Array<LlamaText["values"][number]> = [];
  let at = 0;
  for (const value of text.values) {
    const s = value.toString();
    if (at + s.length <= from) {
      at += s.length;
      continue;
    }
    const cut = Math.max(0, from - at);
    if (typeof value === "string") out.push(value.slice(cut));
    else if (cut === 0) out.push(value);
    at += s.length;
  }
  return LlamaText(out);
}

/**
 * Write the reply's tool calls after `content`. `prefixWritten`: the model opened the first
 * call itself (auto mode); otherwise (a forced choice) the syntax opens it. Returns the reply's
 * text and complete calls, and how the last step ended.
 */
async function writeCalls(run: Generation, content: string, plan: ToolPlan, prefixWritten: boolean): Promise<[string, StepEnd, ToolCall[]]> {
  const { syntax } = plan;
  const tokenizer = run.model.tokenizer;
  const calls: ToolCall[] = [];
  const forcedName = plan.forced?.name ?? null;
  for (;;) {
    // The call's opening: the section's prefix before the first call, the separator before others.
    if (calls.length > 0 || !prefixWritten) {
      const opening = LlamaText([calls.length === 0 ? syntax.sectionPrefix : syntax.betweenCalls, syntax.prefix]).tokenize(tokenizer);
      if (!run.write(opening)) return [content, "length", calls];
    }
    // The name: forced, or one of the tools' names (a grammar).
    let name: string;
    if (forcedName !== null) {
      name = forcedName;
      if (!run.write(LlamaText(name).tokenize(tokenizer, "trimLeadingSpace"))) return [content, "length", calls];
    } else {
      const start = run.tokens.length;
      const end = await run.sample(plan.nameGrammar, () => false);
      if (end !== "eog") return [content, end, calls];
      name = run.detokenize(run.tokens.slice(start));
    }
    const tool = plan.tools.get(name);
    if (!tool) throw new Error(`the name grammar produced ${JSON.stringify(name)}, which is no tool's`);
    const index = calls.length;
    const id = newToolCallId();
    run.params.onToolCall?.({ index, id, name });
    // The arguments: JSON for the tool's schema, between the syntax's brackets.
    if (!run.write(syntax.paramsPrefixFor(name).tokenize(tokenizer))) return [content, "length", calls];
    const start = run.tokens.length;
    const argsStream = new StopTextStream([], (piece) => run.params.onToolCall?.({ index, arguments: piece }));
    const end = await run.sample(tool.grammar.grammar, (token) => {
      argsStream.push(run.model.detokenize([token], false, run.tokens.slice(-9, -1)));
      return false;
    });
    if (end !== "eog") return [content, end, calls];
    let args = run.detokenize(run.tokens.slice(start));
    if (tool.grammar.terminator && args.endsWith(tool.grammar.terminator)) args = args.slice(0, -tool.grammar.terminator.length).trimEnd();
    tool.grammar.parse(args); // valid by construction: a grammar that let invalid JSON through is a bug to hear of
    argsStream.finish(args);
    calls.push({ id, name, arguments: args });
    // The call's closing is part of the reply's state (the next turn renders it too).
    if (!run.write(syntax.suffixFor(name).tokenize(tokenizer))) return [content, "stop", calls];
    const another = syntax.parallel && plan.parallel && forcedName === null && calls.length < plan.maxCalls;
    if (!another) {
      await run.flush();
      return [content, "stop", calls];
    }
    // Parallel calls: after the closing, one free token says whether another call follows.
    let next = "";
    const decided = await run.sample(null, (token) => {
      next = run.model.detokenize([token], true);
      return true;
    });
    if (decided === "aborted") return [content, "aborted", calls];
    if (decided === "stopped" || decided === "length") run.dropLast(); // never evaluated: the syntax writes what follows, if anything
    const opening = LlamaText([syntax.betweenCalls, syntax.prefix]).toString();
    if (decided !== "stopped" || next.length === 0 || !opening.startsWith(next)) return [content, "stop", calls];
  }
}
