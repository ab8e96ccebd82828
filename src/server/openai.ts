/**
 * OpenAI's chat-completions wire format: the request schema Fastify validates, the mapping
 * of a request to the adapter's parameters, and OpenAI-style errors (replies: openai-reply.ts). Pure (no I/O).
 */
import type { ToolCall } from "../engines/node-llama-cpp/completion.js";
import { checkResponseFormat, checkToolChoice, checkTools } from "../engines/node-llama-cpp/constraints.js";
import { type ChatMessage, encodeHistory } from "../engines/node-llama-cpp/messages.js";
import type { ResponseFormat, ToolChoice } from "../engines/node-llama-cpp/options.js";
import type { LlamaTool } from "../engines/node-llama-cpp/render.js";
import { isKvKeepError, type KvKeepError } from "../errors.js";
import { assertCustomKey } from "../keys/safe-key.js";

/** An error the client caused (or a busy/closing server), sent as `{ error: { message, type, param, code } }`. */
export class ApiError extends Error {
  override readonly name = "ApiError";
  constructor(
    readonly status: number,
    message: string,
    readonly type: string = "invalid_request_error",
    readonly param: string | null = null,
    readonly code: string | null = null,
    /** Extra response headers (e.g. `Retry-After`). */
    readonly headers: Record<string, string> = {},
  ) {
    super(message);
  }
}

export interface ErrorBody {
  error: { message: string; type: string; param: string | null; code: string | null };
}

export function errorBody(error: ApiError): ErrorBody {
  return { error: { message: error.message, type: error.type, param: error.param, code: error.code } };
}

const nullable = (schema: Record<string, unknown>): Record<string, unknown> => ({ anyOf: [schema, { type: "null" }] });

/**
 * The body of `POST /v1/chat/completions`. Fields kvkeep does not use are accepted and
 * ignored (clients send many), except those whose meaning it cannot honour, which
 * `toTurnRequest` refuses.
 */
export const chatCompletionBodySchema = {
  type: "object",
  required: ["model", "messages"],
  properties: {
    model: { type: "string", minLength: 1 },
    messages: {
      type: "array",
      minItems: 1,
      items: {
        type: "object",
        required: ["role"],
        properties: {
          role: { type: "string", enum: ["system", "developer", "user", "assistant", "tool", "function"] },
          content: {
            anyOf: [
              { type: "string" },
              { type: "null" },
              {
                type: "array",
                items: { type: "object", required: ["type"], properties: { type: { type: "string" }, text: { type: "string" } } },
              },
            ],
          },
          name: { type: "string" },
          tool_call_id: { type: "string", minLength: 1 },
          tool_calls: nullable({
            type: "array",
            items: {
              type: "object",
              required: ["id", "function"],
              properties: {
                id: { type: "string", minLength: 1 },
                type: { type: "string", enum: ["function"] },
                function: {
                  type: "object",
                  required: ["name", "arguments"],
                  properties: { name: { type: "string", minLength: 1 }, arguments: { type: "string" } },
                },
              },
            },
          }),
        },
      },
    },
    tools: nullable({
      type: "array",
      items: {
        type: "object",
        required: ["type", "function"],
        properties: {
          type: { type: "string", enum: ["function"] },
          function: {
            type: "object",
            required: ["name"],
            properties: {
              name: { type: "string", minLength: 1 },
              description: { type: "string" },
              parameters: { type: "object" },
              strict: nullable({ type: "boolean" }),
            },
          },
        },
      },
    }),
    tool_choice: nullable({
      anyOf: [
        { type: "string", enum: ["auto", "none", "required"] },
        {
          type: "object",
          required: ["type", "function"],
          properties: { type: { type: "string", enum: ["function"] }, function: { type: "object", required: ["name"], properties: { name: { type: "string", minLength: 1 } } } },
        },
      ],
    }),
    parallel_tool_calls: nullable({ type: "boolean" }),
    response_format: nullable({
      type: "object",
      required: ["type"],
      properties: {
        type: { type: "string", enum: ["text", "json_object", "json_schema"] },
        json_schema: {
          type: "object",
          required: ["name"],
          properties: { name: { type: "string", minLength: 1 }, description: { type: "string" }, schema: { type: "object" }, strict: nullable({ type: "boolean" }) },
        },
      },
    }),
    stream: nullable({ type: "boolean" }),
    stream_options: nullable({ type: "object", properties: { include_usage: { type: "boolean" } } }),
    max_tokens: nullable({ type: "integer", minimum: 1 }),
    max_completion_tokens: nullable({ type: "integer", minimum: 1 }),
    temperature: nullable({ type: "number", minimum: 0, maximum: 2 }),
    top_p: nullable({ type: "number", minimum: 0, maximum: 1 }),
    seed: nullable({ type: "integer", minimum: -Number.MAX_SAFE_INTEGER, maximum: Number.MAX_SAFE_INTEGER }),
    stop: nullable({
      anyOf: [
        { type: "string", minLength: 1 },
        { type: "array", maxItems: 4, items: { type: "string", minLength: 1 } },
      ],
    }),
    n: nullable({ type: "integer", minimum: 1 }),
    frequency_penalty: nullable({ type: "number", minimum: -2, maximum: 2 }),
    presence_penalty: nullable({ type: "number", minimum: -2, maximum: 2 }),
    kv_cache: { anyOf: [{ type: "string" }, { type: "boolean" }] },
  },
} as const;

/** What a validated request asks for, in the adapter's terms. */
export interface TurnRequest {
  history: ChatMessage[];
  /** A session name, `true` (auto: keyed by the history) or `false` (no cache). */
  kvCache: string | boolean;
  stream: boolean;
  includeUsage: boolean;
  maxTokens: number | undefined;
  temperature: number | undefined;
  topP: number | undefined;
  seed: number | undefined;
  stop: string[] | undefined;
  tools: LlamaTool[] | undefined;
  toolChoice: ToolChoice | undefined;
  parallelToolCalls: boolean | undefined;
  responseFormat: ResponseFormat | undefined;
}

interface RequestToolCall {
  id: string;
  type?: "function";
  function: { name: string; arguments: string };
}

interface RequestMessage {
  role: string;
  content?: string | null | Array<{ type: string; text?: string }>;
  tool_call_id?: string;
  tool_calls?: RequestToolCall[] | null;
}

interface RequestTool {
  type: "function";
  function: { name: string; description?: string; parameters?: Record<string, unknown>; strict?: boolean | null };
}

/** The body after schema validation (only the fields kvkeep reads). */
export interface ChatCompletionBody {
  model: string;
  messages: RequestMessage[];
  stream?: boolean | null;
  stream_options?: { include_usage?: boolean } | null;
  max_tokens?: number | null;
  max_completion_tokens?: number | null;
  temperature?: number | null;
  top_p?: number | null;
  seed?: number | null;
  stop?: string | string[] | null;
  n?: number | null;
  frequency_penalty?: number | null;
  presence_penalty?: number | null;
  kv_cache?: string | boolean;
  tools?: RequestTool[] | null;
  tool_choice?: "auto" | "none" | "required" | { type: "function"; function: { name: string } } | null;
  parallel_tool_calls?: boolean | null;
  functions?: unknown;
  logprobs?: unknown;
  response_format?: { type: "text" | "json_object" | "json_schema"; json_schema?: { name: string; schema?: Record<string, unknown>; strict?: boolean | null } } | null;
}

const invalid = (message: string, param: string | null, code: string | null = null): ApiError =>
  new ApiError(400, message, "invalid_request_error", param, code);

function messageText(message: RequestMessage, index: number): string {
  const content = message.content;
  if (typeof content === "string") return content;
  if (content === null || content === undefined) {
    if (message.role === "assistant" && message.tool_calls?.length) return "";
    throw invalid(`messages[${index}] has no content; only an assistant message that calls tools may have none.`, `messages[${index}].content`);
  }
  return content
    .map((part, p) => {
      if (part.type !== "text" || typeof part.text !== "string") {
        throw invalid(`messages[${index}].content[${p}] is of type '${part.type}'; only text parts are supported.`, `messages[${index}].content[${p}].type`);
      }
      return part.text;
    })
    .join("");
}

/** The cache a request names: `kv_cache` in the body, else the `X-KV-Cache` header, else auto mode. */
function kvCacheOf(body: ChatCompletionBody, header: string | undefined, cacheEnabled: boolean): string | boolean {
  if (!cacheEnabled) return false;
  const named = body.kv_cache ?? (header !== undefined && header.length > 0 ? header : true);
  if (typeof named === "string") {
    try {
      // A session name as the adapter takes it: an auto-mode key (`auto-<16 hex>`) or
      // kvkeep's own directory names are the client's mistake (400), not the server's (500).
      assertCustomKey(named, "kv_cache");
    } catch (error) {
      if (isKvKeepError(error)) throw invalid(`kv_cache is not a usable session name: ${error.message}`, "kv_cache", "invalid_kv_cache");
      throw error;
    }
  }
  return named;
}

/**
 * Check what the schema cannot (model, roles, unsupported features) and map the body to
 * the adapter's terms. Throws `ApiError` (400, or 404 for an unknown model).
 */
export function toTurnRequest(
  body: ChatCompletionBody,
  context: { modelId: string; kvCacheHeader: string | undefined; cacheEnabled: boolean },
): TurnRequest {
  if (body.model !== context.modelId) {
    throw new ApiError(404, `The model '${body.model}' does not exist; this server serves '${context.modelId}'.`, "invalid_request_error", "model", "model_not_found");
  }
  if (body.n != null && body.n !== 1) throw invalid("n must be 1: kvkeep serve generates one choice per request.", "n");
  if (Array.isArray(body.functions) && body.functions.length > 0) {
    throw invalid("functions (OpenAI's deprecated function calling) are not supported by kvkeep serve: send tools.", "functions");
  }
  for (const penalty of ["frequency_penalty", "presence_penalty"] as const) {
    if (body[penalty] != null && body[penalty] !== 0) throw invalid(`${penalty} is not supported by kvkeep serve (only 0).`, penalty);
  }
  if (body.logprobs === true) throw invalid("logprobs are not supported by kvkeep serve.", "logprobs");

  const history = body.messages.map((message, index): ChatMessage => {
    if (message.role === "function") {
      throw invalid(`messages[${index}] has role 'function' (OpenAI's deprecated function calling); send tool messages.`, `messages[${index}].role`);
    }
    if (message.role === "tool") {
      if (message.tool_call_id === undefined) throw invalid(`messages[${index}] is a tool message without tool_call_id.`, `messages[${index}].tool_call_id`);
      return { role: "tool", content: messageText(message, index), toolCallId: message.tool_call_id };
    }
    if (message.tool_calls?.length) {
      if (message.role !== "assistant") throw invalid(`messages[${index}] has tool_calls but role '${message.role}'.`, `messages[${index}].tool_calls`);
      const toolCalls = message.tool_calls.map((c): ToolCall => ({ id: c.id, name: c.function.name, arguments: c.function.arguments }));
      return { role: "assistant", content: messageText(message, index), toolCalls };
    }
    return { role: message.role === "developer" ? "system" : message.role, content: messageText(message, index) };
  });
  if (!history.some((m) => m.role !== "system")) throw invalid("messages must include a user or assistant message.", "messages");

  // Tools, the tool choice and the response format, checked as the adapter will (400 before a slot is taken).
  const tools = body.tools?.length
    ? body.tools.map((t): LlamaTool => ({
        name: t.function.name,
        ...(t.function.description !== undefined ? { description: t.function.description } : {}),
        ...(t.function.parameters !== undefined ? { params: t.function.parameters } : {}),
        ...(t.function.strict === true ? { strict: true } : {}),
      }))
    : undefined;
  const choice = body.tool_choice;
  const toolChoice: ToolChoice | undefined = choice == null ? undefined : typeof choice === "string" ? choice : { name: choice.function.name };
  const rf = body.response_format;
  let responseFormat: ResponseFormat | undefined;
  if (rf?.type === "json_schema") {
    if (!rf.json_schema) throw invalid("response_format of type 'json_schema' needs json_schema: { name, schema, strict? }.", "response_format.json_schema");
    responseFormat = { type: "json_schema", name: rf.json_schema.name, schema: rf.json_schema.schema ?? {}, strict: rf.json_schema.strict === true };
  } else if (rf?.type === "json_object") responseFormat = { type: "json_object" };
  try {
    encodeHistory(history);
    const checked = checkTools(tools);
    const chosen = checkToolChoice(toolChoice, checked);
    if (checkResponseFormat(responseFormat) !== null && checked.size > 0 && chosen === "auto") {
      throw invalid(
        "response_format with tools needs tool_choice 'none', 'required' or a named function: kvkeep cannot constrain a reply to be either JSON or a tool call.",
        "response_format",
      );
    }
  } catch (error) {
    if (isKvKeepError(error, "INVALID_ARGUMENT")) throw apiErrorOfArgument(error);
    throw error;
  }

  const stream = body.stream === true;
  return {
    history,
    kvCache: kvCacheOf(body, context.kvCacheHeader, context.cacheEnabled),
    stream,
    includeUsage: stream && body.stream_options?.include_usage === true,
    maxTokens: body.max_completion_tokens ?? body.max_tokens ?? undefined,
    temperature: body.temperature ?? undefined,
    topP: body.top_p ?? undefined,
    seed: body.seed ?? undefined,
    stop: body.stop == null ? undefined : typeof body.stop === "string" ? [body.stop] : body.stop,
    tools,
    toolChoice,
    parallelToolCalls: body.parallel_tool_calls ?? undefined,
    responseFormat,
  };
}

/** The request parameter an adapter argument stands for. */
const PARAM_OF_ARGUMENT: Record<string, string> = {
  history: "messages",
  tools: "tools",
  toolChoice: "tool_choice",
  responseFormat: "response_format",
  parallelToolCalls: "parallel_tool_calls",
  maxTokens: "max_tokens",
};

/** A 400 for an argument the adapter refused (INVALID_ARGUMENT), naming the request's parameter. */
export function apiErrorOfArgument(error: KvKeepError): ApiError {
  const argument = error.argument ?? null;
  const param = argument === null ? null : (PARAM_OF_ARGUMENT[argument] ?? argument);
  return new ApiError(400, error.message, "invalid_request_error", param, argument === "history" && /context/.test(error.message) ? "context_length_exceeded" : "invalid_value");
}

/** `messages[0].role` from Ajv's `/messages/0/role`. */
export function paramOfPath(instancePath: string, missingProperty?: unknown): string | null {
  const parts = instancePath.split("/").filter(Boolean);
  if (typeof missingProperty === "string") parts.push(missingProperty);
  if (parts.length === 0) return null;
  return parts.reduce((param, part) => (/^\d+$/.test(part) ? `${param}[${part}]` : param ? `${param}.${part}` : part), "");
}

