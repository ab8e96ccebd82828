/**
 * Checking what a call asks its reply to be — tools, a tool choice, a response format — before
 * anything runs (pure: the server checks a request with it before it takes a slot).
 */
import { KvKeepError } from "../../errors.js";
import { type GrammarSchema, toGrammarSchema } from "./json-schema.js";
import type { CompletionParams, LlamaTool, ResponseFormat, ToolChoice } from "./options.js";

/** A tool's name: what OpenAI allows, which is also what a grammar literal and the wrapper's docs take as is. */
const TOOL_NAME = /^[A-Za-z0-9_-]{1,64}$/;
/** Parallel calls in one reply, at most (a model looping on calls stops here). */
export const MAX_PARALLEL_CALLS = 16;
/** The arguments of a tool that declares no parameters: an empty object. */
export const NO_PARAMS: GrammarSchema = { type: "object", properties: {} };

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

