/**
 * What shape a reply must take — free text, JSON for a schema, or tool calls in the chat
 * wrapper's syntax — and the grammars and texts that make it so. The syntax is the wrapper's
 * own (`settings.functions`): the same texts it renders a call from the history with, so a
 * call kvkeep generated renders back to the very tokens the sequence holds.
 */
import { type ChatWrapper, type LlamaGrammar, type LlamaModel, LlamaText } from "node-llama-cpp";
import { checkResponseFormat, checkToolChoice, checkTools, MAX_PARALLEL_CALLS, NO_PARAMS } from "./constraints.js";
import { type JsonGrammar, jsonGrammar, nameGrammar } from "./grammars.js";
import type { CompletionParams } from "./options.js";

/** A chat wrapper's call syntax (see `ChatWrapperSettings.functions`). */
export interface CallSyntax {
  /** What opens a call (`||call: `, `<tool_call>\n{"name": "`, …). */
  prefix: LlamaText;
  /** `prefix` as text (special tokens as their text). */
  prefixText: string;
  /** Texts that, written by the model, start a call: the prefix and the wrapper's alternates. */
  prefixes: string[];
  /** Parallel calls: what comes before the first call and between two. */
  sectionPrefix: LlamaText;
  betweenCalls: LlamaText;
  /** Whether the wrapper renders several calls in one section (parallel calls). */
  parallel: boolean;
  paramsPrefixFor(name: string): LlamaText;
  suffixFor(name: string): LlamaText;
  /** A whole call as the wrapper renders it, with the arguments' text as given. */
  rawCall(name: string, args: string): LlamaText;
}

const withName = (text: string | LlamaText, name: string): LlamaText =>
  LlamaText(text).mapValues((value) => (typeof value === "string" ? value.replaceAll("{{functionName}}", name) : value));

export function callSyntax(wrapper: ChatWrapper): CallSyntax {
  const { call, parallelism } = wrapper.settings.functions;
  const prefix = LlamaText(call.prefix);
  const prefixText = prefix.toString();
  const alternates = (call.prefixAlternateMatches ?? []).map((p) => LlamaText(p).toString()).filter((p) => p.length > 0);
  const syntax: CallSyntax = {
    prefix,
    prefixText,
    prefixes: [...new Set([prefixText, ...alternates])].filter((p) => p.length > 0),
    sectionPrefix: LlamaText(parallelism?.call.sectionPrefix ?? ""),
    betweenCalls: LlamaText(parallelism?.call.betweenCalls ?? ""),
    parallel: parallelism != null,
    paramsPrefixFor: (name) => withName(call.paramsPrefix, name),
    suffixFor: (name) => withName(call.suffix, name),
    rawCall: (name, args) => LlamaText([prefix, name, syntax.paramsPrefixFor(name), args, syntax.suffixFor(name)]),
  };
  return syntax;
}

export interface ToolPlan {
  kind: "tools";
  syntax: CallSyntax;
  tools: Map<string, { grammar: JsonGrammar }>;
  /** The grammar of the tools' names (null when the name is forced). */
  nameGrammar: LlamaGrammar | null;
  /** A call is forced: of the named tool, or (`name` null) of any. Null: the model may answer in text (auto). */
  forced: { name: string | null } | null;
  /** The model may start a call on its own (tool choice "auto"). */
  auto: boolean;
  /** More than one call may follow (when the wrapper's syntax has parallel calls). */
  parallel: boolean;
  maxCalls: number;
}

export type ReplyPlan = { kind: "text" } | { kind: "json"; grammar: JsonGrammar } | ToolPlan;

/** The plan for a call's reply (the parameters were checked by `checkConstraints`). */
export async function planReply(model: LlamaModel, wrapper: ChatWrapper, params: CompletionParams): Promise<ReplyPlan> {
  const tools = checkTools(params.tools);
  const choice = checkToolChoice(params.toolChoice, tools);
  if (tools.size > 0 && choice !== "none") {
    const llama = model.llama;
    const grammars = new Map<string, { grammar: JsonGrammar }>();
    for (const [name, schema] of tools) grammars.set(name, { grammar: await jsonGrammar(llama, schema ?? NO_PARAMS) });
    const forced = choice === "auto" ? null : choice === "required" ? { name: null } : { name: choice.name };
    return {
      kind: "tools",
      syntax: callSyntax(wrapper),
      tools: grammars,
      nameGrammar: forced?.name ? null : await nameGrammar(llama, [...tools.keys()]),
      forced,
      auto: choice === "auto",
      parallel: params.parallelToolCalls !== false,
      maxCalls: MAX_PARALLEL_CALLS,
    };
  }
  const format = checkResponseFormat(params.responseFormat);
  if (format !== null) return { kind: "json", grammar: await jsonGrammar(model.llama, format) };
  return { kind: "text" };
}
