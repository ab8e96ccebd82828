/** Rendering a conversation to tokens with the model's chat wrapper (never a flattened string). */
import type { ChatHistoryItem, ChatModelFunctionCall, ChatModelFunctions, ChatModelResponse, ChatWrapper, LlamaModel, Token } from "node-llama-cpp";

/** One part of a model response: text, a function call, a segment. */
type ResponsePart = ChatModelResponse["response"][number];
import type { CacheMessage } from "../../types.js";
import { decodeHistory } from "./messages.js";
import { checkTools } from "./constraints.js";
import type { LlamaTool } from "./options.js";
import { type CallSyntax, callSyntax } from "./reply-plan.js";

export type { LlamaTool };

/** A tool's result as the wrapper renders it: JSON when the text is JSON, else the text. */
function resultValue(content: string): unknown {
  try {
    return JSON.parse(content);
  } catch {
    return content;
  }
}

/**
 * The history as node-llama-cpp's chat history. An assistant message calling tools, the tool
 * results after it and the assistant's reply after those are one model response (calls with
 * their results, then text), as node-llama-cpp renders a turn with function calls: each call
 * is rendered from its raw text, exactly as it was generated.
 */
export function toChatHistory(history: readonly CacheMessage[], syntax?: CallSyntax): ChatHistoryItem[] {
  const items: ChatHistoryItem[] = [];
  /** The model response that tool results (and a reply after them) continue, if the last message opened one. */
  let open: ResponsePart[] | null = null;
  let afterResults = false;
  /** The open response's calls by id, for the results that follow. */
  const calls = new Map<string, ChatModelFunctionCall>();
  for (const m of decodeHistory(history)) {
    if (m.kind === "system" || m.kind === "user") {
      items.push(m.kind === "system" ? { type: "system", text: m.text } : { type: "user", text: m.text });
      open = null;
      afterResults = false;
    } else if (m.kind === "assistant") {
      if (open && afterResults) open.push(m.text);
      else items.push({ type: "model", response: [m.text] });
      open = null;
      afterResults = false;
    } else if (m.kind === "tool-calls") {
      const continuing = open !== null && afterResults;
      const response: ResponsePart[] = continuing ? open! : [];
      if (m.text.length > 0) response.push(m.text);
      m.calls.forEach((call, i) => {
        const item: ChatModelFunctionCall = {
          type: "functionCall",
          name: call.name,
          params: resultValue(call.arguments),
          result: undefined,
          ...(syntax ? { rawCall: syntax.rawCall(call.name, call.arguments).toJSON() } : {}),
          ...(i === 0 && continuing ? { startsNewChunk: true } : {}),
        };
        response.push(item);
        calls.set(call.id, item);
      });
      if (!continuing) items.push({ type: "model", response });
      open = response;
      afterResults = false;
    } else if (m.kind === "tool-results") {
      // Tool results: fill in the calls of the message before (messages.ts put them right after it).
      for (const { id, content } of m.results) {
        const call = open ? calls.get(id) : undefined;
        if (call) call.result = resultValue(content);
      }
      afterResults = true;
    }
  }
  return items;
}

function functionsOf(tools: readonly LlamaTool[] | undefined): ChatModelFunctions | undefined {
  if (!tools?.length) return undefined;
  const schemas = checkTools(tools);
  return Object.fromEntries(
    tools.map((t) => {
      const params = schemas.get(t.name);
      return [t.name, { ...(t.description ? { description: t.description } : {}), ...(params ? { params } : {}) }];
    }),
  ) as ChatModelFunctions;
}

export interface Rendered {
  tokens: Token[];
  /** Text that ends a reply for wrappers that stop on text (plain strings only). */
  stopTexts: string[];
}

/**
 * The prompt for the next reply: the history, then an open assistant turn — or, when the
 * history ends with the assistant's text or tool results, that turn continued.
 */
export function renderPrompt(
  model: LlamaModel,
  wrapper: ChatWrapper,
  history: readonly CacheMessage[],
  tools?: readonly LlamaTool[],
): Rendered {
  const chatHistory = toChatHistory(history, callSyntax(wrapper));
  const last = history.at(-1)?.role;
  if (last !== "assistant" && last !== "kvkeep:tool-results") chatHistory.push({ type: "model", response: [] });
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
