/** Rendering a conversation to tokens with the model's chat wrapper (never a flattened string). */
import type { ChatHistoryItem, ChatModelFunctions, ChatWrapper, LlamaModel, Token } from "node-llama-cpp";
import { KvKeepError } from "../../errors.js";
import type { CacheMessage } from "../../types.js";

/** A tool the model may be told about: its name enters the config hash. */
export interface LlamaTool {
  name: string;
  description?: string | undefined;
  /** JSON schema of the parameters, passed to the chat wrapper as node-llama-cpp expects. */
  params?: unknown;
}

export function toChatHistory(history: readonly CacheMessage[]): ChatHistoryItem[] {
  return history.map((m, i): ChatHistoryItem => {
    if (m.role === "system") return { type: "system", text: m.content };
    if (m.role === "user") return { type: "user", text: m.content };
    if (m.role === "assistant") return { type: "model", response: [m.content] };
    throw new KvKeepError("INVALID_ARGUMENT", `history[${i}].role must be "system", "user" or "assistant".`, {
      argument: "history",
    });
  });
}

function functionsOf(tools: readonly LlamaTool[] | undefined): ChatModelFunctions | undefined {
  if (!tools?.length) return undefined;
  return Object.fromEntries(
    tools.map((t) => [t.name, { ...(t.description ? { description: t.description } : {}), ...(t.params ? { params: t.params } : {}) }]),
  ) as ChatModelFunctions;
}

export interface Rendered {
  tokens: Token[];
  /** Text that ends a reply for wrappers that stop on text (plain strings only). */
  stopTexts: string[];
}

/** The prompt for the next reply: the history, then an open assistant turn. */
export function renderPrompt(
  model: LlamaModel,
  wrapper: ChatWrapper,
  history: readonly CacheMessage[],
  tools?: readonly LlamaTool[],
): Rendered {
  const chatHistory = toChatHistory(history);
  if (history.at(-1)?.role !== "assistant") chatHistory.push({ type: "model", response: [] });
  const functions = functionsOf(tools);
  const state = wrapper.generateContextState({ chatHistory, ...(functions ? { availableFunctions: functions } : {}) });
  const stopTexts = state.stopGenerationTriggers
    .map((trigger) => trigger.values)
    .filter((values) => values.length > 0 && values.every((v) => typeof v === "string"))
    .map((values) => values.join(""));
  return { tokens: state.contextText.tokenize(model.tokenizer), stopTexts };
}

/**
 * What a fresh cache is primed with: the system prompt (and tools) as the wrapper renders
 * them. With some wrappers the system-only render is not a prefix of the full render (it
 * ends in an assistant header), so it is cut to the part shared with the prompt.
 */
export function primeTokens(
  model: LlamaModel,
  wrapper: ChatWrapper,
  history: readonly CacheMessage[],
  prompt: readonly Token[],
  tools?: readonly LlamaTool[],
): Token[] {
  const system = history.filter((m) => m.role === "system");
  const systemOnly = renderPrompt(model, wrapper, system, tools).tokens;
  let shared = 0;
  while (shared < systemOnly.length && shared < prompt.length - 1 && systemOnly[shared] === prompt[shared]) shared++;
  return prompt.slice(0, shared);
}
