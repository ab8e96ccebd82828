/**
 * OpenAI's chat-completions wire format: the request schema Fastify validates, the mapping
 * of a request to the adapter's parameters, the response and stream-chunk bodies, and
 * OpenAI-style errors. Pure (no I/O).
 */
import { randomBytes } from "node:crypto";
import { isKvKeepError } from "../errors.js";
import { assertCustomKey } from "../keys/safe-key.js";
import type { CacheMessage } from "../types.js";

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
        },
      },
    },
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
  history: CacheMessage[];
  /** A session name, `true` (auto: keyed by the history) or `false` (no cache). */
  kvCache: string | boolean;
  stream: boolean;
  includeUsage: boolean;
  maxTokens: number | undefined;
  temperature: number | undefined;
  topP: number | undefined;
  seed: number | undefined;
  stop: string[] | undefined;
}

interface RequestMessage {
  role: string;
  content?: string | null | Array<{ type: string; text?: string }>;
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
  tools?: unknown;
  functions?: unknown;
  logprobs?: unknown;
  response_format?: unknown;
}

const invalid = (message: string, param: string | null, code: string | null = null): ApiError =>
  new ApiError(400, message, "invalid_request_error", param, code);

function messageText(message: RequestMessage, index: number): string {
  const content = message.content;
  if (typeof content === "string") return content;
  if (content === null || content === undefined) {
    throw invalid(`messages[${index}] has no content; kvkeep serve supports text messages only (no tool calls).`, `messages[${index}].content`);
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
  if ((Array.isArray(body.tools) && body.tools.length > 0) || (Array.isArray(body.functions) && body.functions.length > 0)) {
    throw invalid("tools are not supported by kvkeep serve.", Array.isArray(body.tools) ? "tools" : "functions");
  }
  for (const penalty of ["frequency_penalty", "presence_penalty"] as const) {
    if (body[penalty] != null && body[penalty] !== 0) throw invalid(`${penalty} is not supported by kvkeep serve (only 0).`, penalty);
  }
  if (body.logprobs === true) throw invalid("logprobs are not supported by kvkeep serve.", "logprobs");
  const format = (body.response_format as { type?: unknown } | null | undefined)?.type;
  if (format !== undefined && format !== "text") throw invalid("only response_format { type: 'text' } is supported.", "response_format");

  const history = body.messages.map((message, index): CacheMessage => {
    if (message.role === "tool" || message.role === "function") {
      throw invalid(`messages[${index}] has role '${message.role}'; tool messages are not supported.`, `messages[${index}].role`);
    }
    return { role: message.role === "developer" ? "system" : message.role, content: messageText(message, index) };
  });
  if (!history.some((m) => m.role !== "system")) throw invalid("messages must include a user or assistant message.", "messages");

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
  };
}

/** `messages[0].role` from Ajv's `/messages/0/role`. */
export function paramOfPath(instancePath: string, missingProperty?: unknown): string | null {
  const parts = instancePath.split("/").filter(Boolean);
  if (typeof missingProperty === "string") parts.push(missingProperty);
  if (parts.length === 0) return null;
  return parts.reduce((param, part) => (/^\d+$/.test(part) ? `${param}[${part}]` : param ? `${param}.${part}` : part), "");
}

export interface Usage {
  prompt_tokens: number;
  completion_tokens: number;
  total_tokens: number;
  prompt_tokens_details: { cached_tokens: number };
}

/** OpenAI's usage block; `cached_tokens` are the prompt tokens kvkeep supplied from a cache. */
export function usageOf(stats: { promptTokens: number; reusedTokens: number; completionTokens: number }): Usage {
  return {
    prompt_tokens: stats.promptTokens,
    completion_tokens: stats.completionTokens,
    total_tokens: stats.promptTokens + stats.completionTokens,
    prompt_tokens_details: { cached_tokens: stats.reusedTokens },
  };
}

export function completionId(): string {
  return `chatcmpl-${randomBytes(12).toString("hex")}`;
}

export interface CompletionHead {
  id: string;
  created: number;
  model: string;
}

export function completionBody(head: CompletionHead, text: string, finishReason: "stop" | "length", usage: Usage) {
  return {
    id: head.id,
    object: "chat.completion" as const,
    created: head.created,
    model: head.model,
    choices: [{ index: 0, message: { role: "assistant" as const, content: text, refusal: null }, logprobs: null, finish_reason: finishReason }],
    usage,
  };
}

/**
 * One `chat.completion.chunk`. With `include_usage`, every chunk carries `usage: null`
 * and a last chunk with no choices carries the usage, as OpenAI sends them.
 */
export function chunkBody(
  head: CompletionHead,
  choice: { delta: { role?: "assistant"; content?: string }; finishReason: "stop" | "length" | null } | null,
  usage: Usage | null | undefined,
) {
  return {
    id: head.id,
    object: "chat.completion.chunk" as const,
    created: head.created,
    model: head.model,
    choices: choice ? [{ index: 0, delta: choice.delta, logprobs: null, finish_reason: choice.finishReason }] : [],
    ...(usage !== undefined ? { usage } : {}),
  };
}

/** A server-sent event carrying `data` as JSON (or the literal `[DONE]`). */
export function sseEvent(data: unknown): string {
  return `data: ${data === "[DONE]" ? data : JSON.stringify(data)}\n\n`;
}
