/**
 * What shape a reply must take — free text, JSON for a schema, or tool calls in the chat
 * wrapper's syntax — and the grammars and texts that make it so. The syntax is the wrapper's
 * own (`settings.functions`): the same texts it renders a call from the history with, so a
 * call kvkeep generated renders back to the very tokens the sequence holds.
 */
import { type ChatWrapper, type LlamaGrammar, type LlamaModel, LlamaText } from "node-llama-cpp";
import { KvKeepError } from "../../errors.js";
import { type JsonGrammar, jsonGrammar, nameGrammar } from "./grammars.js";
import { type GrammarSchema, toGrammarSchema } from "./json-schema.js";
import type { CompletionParams, ResponseFormat, ToolChoice } from "./options.js";
import type { LlamaTool } from "./render.js";

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

/** A tool's name: what OpenAI allows, which is also what a grammar literal and the wrapper's docs take as is. */
const TOOL_NAME = /^[A-Za-z0-9_-]{1,64}$/;
/** Parallel calls in one reply, at most (a model looping on calls stops here). */
const MAX_PARALLEL_CALLS = 16;
/** The arguments of a tool that declares no parameters: an empty object. */
const NO_PARAMS: GrammarSchema = { type: "object", properties: {} };

const invalid = (message: string, argument: string): KvKeepError => new KvKeepError("INVALID_ARGUMENT", message, { argument });

/** Tools and their parameter schemas in the grammar's subset, checked. Throws INVALID_ARGUMENT ("tools"). */
export function checkTools(tools: readonly LlamaTool[] | undefined): Map<string, GrammarSchema | undefined> {
  const out = new Map<string, GrammarSchema | undefined>();
  if (tools === undefined) return out;
  if (!Array.isArray(tools)) throw invalid("tools must be an array of { name, description?, params?, strict? }.", "tools");
  tools.forEach((tool, i) => {
    if (!tool || typeof tool !== "object" || typeof tool.name !== "string" || !TOOL_NAME.test(tool.name)) {
      throw invalid(`tools[${i}].name must be 1-64 letters, digits, '_' or '-'.`, "tools");
    }
    if (out.has(tool.name)) throw invalid(`tools[${i}]: two tools are named "${tool.name}".`, "tools");
    if (tool.description !== undefined && typeof tool.description !== "string") throw invalid(`tools[${i}].description must be a string.`, "tools");
    const schema = tool.params === undefined || tool.params === null ? undefined : toGrammarSchema(tool.params, { strict: tool.strict === true, argument: "tools", path: `tools[${i}].params` });
    out.set(tool.name, schema);
  });
  return out;
}

/** The response format's schema in the grammar's subset (null: free text). Throws INVALID_ARGUMENT ("responseFormat"). */
export function checkResponseFormat(format: ResponseFormat | undefined): GrammarSchema | null {
  if (format === undefined || format.type === "text") return null;
  if (format.type === "json_object") return { type: "object", additionalProperties: true };
  if (format.type === "json_schema") return toGrammarSchema(format.schema, { strict: format.strict === true, argument: "responseFormat", path: "responseFormat.schema" });
  throw invalid(`responseFormat.type must be "text", "json_object" or "json_schema".`, "responseFormat");
}

/** Checks `toolChoice` against the tools; returns it with its default ("auto" with tools). */
export function checkToolChoice(choice: ToolChoice | undefined, tools: ReadonlyMap<string, unknown>): ToolChoice {
  if (choice === undefined) return "auto";
  if (choice === "auto" || choice === "none") return choice;
  if (choice === "required") {
    if (tools.size === 0) throw invalid(`toolChoice "required" needs tools.`, "toolChoice");
    return choice;
  }
  if (choice && typeof choice === "object" && typeof choice.name === "string") {
    if (!tools.has(choice.name)) throw invalid(`toolChoice names "${choice.name}", which is not among the tools.`, "toolChoice");
    return { name: choice.name };
  }
  throw invalid(`toolChoice must be "auto", "none", "required" or { name }.`, "toolChoice");
}

/** Check every constraint of a call's parameters (INVALID_ARGUMENT naming the parameter). */
export function checkConstraints(params: CompletionParams): void {
  const tools = checkTools(params.tools);
  const choice = checkToolChoice(params.toolChoice, tools);
  const format = checkResponseFormat(params.responseFormat);
  if (format !== null && tools.size > 0 && choice === "auto") {
    throw invalid(
      'responseFormat with tools needs toolChoice "none", "required" or a named tool: kvkeep cannot constrain a reply to be either JSON or a call.',
      "responseFormat",
    );
  }
  if (params.parallelToolCalls !== undefined && typeof params.parallelToolCalls !== "boolean") throw invalid("parallelToolCalls must be a boolean.", "parallelToolCalls");
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
