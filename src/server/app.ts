/**
 * The HTTP side of `kvkeep serve`: a Fastify app with OpenAI's routes over a pool of
 * completion engines (one node-llama-cpp adapter per slot). It knows nothing of model
 * loading: `serve.ts` builds the engines and the store and hands them in.
 */
import { timingSafeEqual } from "node:crypto";
import Fastify, { type FastifyError, type FastifyInstance, type FastifyReply, type FastifyRequest } from "fastify";
import type { CompletionParams, CompletionResult } from "../engines/node-llama-cpp/completion.js";
import { isKvKeepError } from "../errors.js";
import { type Logger, logLine } from "../logger.js";
import type { KvKeepMetrics } from "../metrics/index.js";
import type { ToolCallDelta } from "../engines/node-llama-cpp/options.js";
import {
  ApiError,
  apiErrorOfArgument,
  type ChatCompletionBody,
  chatCompletionBodySchema,
  errorBody,
  paramOfPath,
  toTurnRequest,
  type TurnRequest,
} from "./openai.js";
import {
  chunkBody,
  type CompletionHead,
  completionBody,
  completionId,
  type FinishReason,
  sseEvent,
  type ToolCallChunk,
  turnReport,
  usageOf,
} from "./openai-reply.js";
import { scopeOfApiKey } from "./options.js";
import { QueueAbortedError, QueueFullError, retryAfterSeconds, type SlotPool } from "./pool.js";
import { type PromptBounds, promptCannotFit } from "./prompt-bounds.js";
import { hostAllowed, originAllowed } from "./origin.js";
import { listSessions, webPage } from "./web.js";

/** What a slot runs: the node-llama-cpp adapter's `completion`. */
export interface CompletionEngine {
  completion(params: CompletionParams): Promise<CompletionResult>;
}

export interface AppDeps {
  /** The id clients pass as `model` (and `/v1/models` lists). */
  modelId: string;
  /** Unix seconds for `/v1/models`' `created` (the model file's mtime). */
  modelCreated: number;
  pool: SlotPool<CompletionEngine>;
  parallel: number;
  metrics: KvKeepMetrics;
  /**
   * The keys a client may send; each is its own isolation scope (`scopeOfApiKey`), so no
   * client reads another's caches, nor reuses their prefixes. Empty: no authentication, and
   * every request in the shared space (one user).
   */
  apiKeys: readonly string[];
  bodyLimit: number;
  /** False: every turn runs without kvkeep (`--no-cache`). */
  cacheEnabled: boolean;
  logger: Logger;
  /** What a prompt must stay under to be worth rendering (see prompt-bounds.ts); null: no check before rendering. */
  promptBounds?: PromptBounds | null | undefined;
  /** The host the server listens on (`--host`): a name requests may carry in Host (see origin.ts). */
  host: string;
  /** Longest a client may take to send a whole request, headers and body (408 and closed past it). Default 30 s. */
  requestTimeoutMs?: number | undefined;
  /** The cache root, for the web page's list of sessions (`GET /kvkeep/sessions`); absent: that route answers 404. */
  root?: string | undefined;
}

/** The web page: static, holds no data, so it is served without a key (its requests send the key). */
function isWebPage(request: FastifyRequest): boolean {
  const route = request.url.split("?")[0];
  return request.method === "GET" && (route === "/" || route === "/index.html");
}

/** A client that trickles its request in (a byte a second) must not hold a connection for ever. */
export const DEFAULT_REQUEST_TIMEOUT_MS = 30_000;

export interface ServeApp {
  app: FastifyInstance;
  /** Abort every running turn (they roll back, keeping the last committed state). */
  abortAll(reason: string): void;
}

/** OpenAI's finish reason of a reply: `tool_calls` when it calls tools. */
function finishReasonOf(result: CompletionResult): FinishReason {
  return result.toolCalls?.length ? "tool_calls" : result.stats.finishReason;
}

/** A turn aborted while its client is still connected: the server is closing. */
const shuttingDown = (): ApiError => new ApiError(503, "The server is shutting down; retry the request.", "server_error", null, "server_shutting_down");
const notFound = (what: string): ApiError => new ApiError(404, what, "invalid_request_error", null, "unknown_url");

/** The bearer token of a request, or null when it sends none. */
function bearerToken(header: string | string[] | undefined): string | null {
  return typeof header === "string" && /^Bearer /i.test(header) ? header.slice(7).trim() : null;
}

function sameSecret(given: string, expected: string): boolean {
  const a = Buffer.from(given);
  const b = Buffer.from(expected);
  return a.length === b.length && timingSafeEqual(a, b);
}

/** Map anything thrown in a request to an OpenAI-style error; never a stack trace. */
function toApiError(error: FastifyError | Error, logger: Logger): ApiError {
  if (error instanceof ApiError) return error;
  const fastifyError = error as FastifyError;
  if (fastifyError.validation?.length) {
    const first = fastifyError.validation[0]!;
    if (first.keyword === "maxItems" && first.instancePath === "/messages") {
      const limit = (first.params as { limit?: number }).limit ?? 0;
      return new ApiError(
        400,
        `the prompt has more than ${limit} messages, and each takes at least one token: it cannot fit the context (${limit + 1} tokens).`,
        "invalid_request_error",
        "messages",
        "context_length_exceeded",
      );
    }
    const param = paramOfPath(first.instancePath, (first.params as { missingProperty?: unknown })?.missingProperty);
    const what = param ?? "the request body";
    return new ApiError(400, `Invalid value for '${what}': ${first.message ?? "invalid"}.`, "invalid_request_error", param, "invalid_value");
  }
  switch (fastifyError.code) {
    case "FST_ERR_CTP_BODY_TOO_LARGE":
      return new ApiError(413, "The request body is larger than this server accepts (--max-body).", "invalid_request_error", null, "request_too_large");
    case "FST_ERR_CTP_INVALID_JSON_BODY":
    case "FST_ERR_CTP_EMPTY_JSON_BODY":
      return new ApiError(400, "We could not parse the JSON body of your request: send a valid JSON object.", "invalid_request_error", null, "invalid_json");
    case "FST_ERR_CTP_INVALID_MEDIA_TYPE":
      return new ApiError(415, "The request body must be JSON (Content-Type: application/json).", "invalid_request_error", null, "unsupported_media_type");
  }
  if (error instanceof SyntaxError) {
    return new ApiError(400, "We could not parse the JSON body of your request: send a valid JSON object.", "invalid_request_error", null, "invalid_json");
  }
  const status = fastifyError.statusCode;
  if (typeof status === "number" && status >= 400 && status < 500) {
    return new ApiError(status, fastifyError.message, "invalid_request_error", null, fastifyError.code ?? null);
  }
  logger.error(logLine("request failed", { error: error.message, code: fastifyError.code }));
  return new ApiError(500, "The server had an error while processing your request.", "server_error");
}

export function buildApp(deps: AppDeps): ServeApp {
  const { metrics, pool, logger } = deps;
  const running = new Set<AbortController>();
  const keys = deps.apiKeys.map((key) => ({ key, scope: scopeOfApiKey(key) }));
  /** The scope of each authenticated request (the key it sent). */
  const scopes = new WeakMap<FastifyRequest, string>();
  let recentTurnMs = 1000;

  const requestTimeoutMs = deps.requestTimeoutMs ?? DEFAULT_REQUEST_TIMEOUT_MS;
  const app = Fastify({
    logger: false,
    bodyLimit: deps.bodyLimit,
    // Node answers 408 and closes a connection whose request (headers and body) is not all in
    // within the timeout; it looks at connections this often (its default, 30 s, would let a
    // request trickle in for twice the timeout).
    requestTimeout: requestTimeoutMs,
    http: {
      headersTimeout: Math.min(requestTimeoutMs, 60_000),
      connectionsCheckingInterval: Math.max(100, Math.min(1000, Math.floor(requestTimeoutMs / 4))),
    },
    // Closing destroys every connection: running turns were aborted first, and a keep-alive
    // connection on which no request ever arrived would otherwise hold close() for a minute.
    forceCloseConnections: true,
    // Strict JSON: no type coercion, nothing silently dropped.
    ajv: { customOptions: { coerceTypes: false, removeAdditional: false, useDefaults: false } },
  });

  // JSON only: a text/plain body is refused (415), not handed to the schema as a string.
  app.removeContentTypeParser("text/plain");

  app.setErrorHandler((error: FastifyError, _request, reply) => {
    const apiError = toApiError(error, logger);
    void reply.code(apiError.status).headers(apiError.headers).send(errorBody(apiError));
  });
  app.setNotFoundHandler((request, reply) => {
    const apiError = notFound(`Unknown request URL: ${request.method} ${request.url.split("?")[0]}.`);
    void reply.code(404).send(errorBody(apiError));
  });

  /**
   * The scope of the key `token` is, or null for none (or no token). Every key is compared
   * (in constant time each), whichever matches.
   */
  const scopeOfToken = (token: string | null): string | null => {
    let scope: string | null = null;
    if (token !== null) for (const k of keys) if (sameSecret(token, k.key)) scope = k.scope;
    return scope;
  };
  /** Whether a request may see what only key holders see: any key, when keys are set. */
  const authorized = (header: string | string[] | undefined): boolean => keys.length === 0 || scopeOfToken(bearerToken(header)) !== null;

  // Before anything else, on every route: a request a browser page of another site made (by
  // DNS rebinding, or cross-origin) is refused unread (origin.ts).
  app.addHook("onRequest", async (request, reply) => {
    const host = request.headers.host;
    if (!hostAllowed(host, deps.host, keys.length > 0)) {
      const apiError = new ApiError(
        403,
        `This server does not answer to the host name ${JSON.stringify(host ?? "")}: without an API key it serves only loopback names, IP addresses and its --host (a page could otherwise reach it by DNS rebinding). Use one of those, or start it with --host NAME or --api-key.`,
        "invalid_request_error",
        null,
        "host_not_allowed",
      );
      return reply.code(403).send(errorBody(apiError));
    }
    const origin = request.headers.origin;
    if (!originAllowed(typeof origin === "string" ? origin : undefined, host)) {
      const apiError = new ApiError(403, `Requests from pages of another origin (${String(origin)}) are not served.`, "invalid_request_error", null, "origin_not_allowed");
      return reply.code(403).send(errorBody(apiError));
    }
  });

  // Authentication before the body is read: an unauthenticated client cannot make the server parse anything.
  app.addHook("onRequest", async (request, reply) => {
    if (keys.length === 0 || request.url === "/health" || isWebPage(request)) return;
    const token = bearerToken(request.headers.authorization);
    const scope = scopeOfToken(token);
    if (scope !== null) scopes.set(request, scope);
    if (token === null || scope === null) {
      const apiError = new ApiError(
        401,
        token === null ? "You didn't provide an API key: send 'Authorization: Bearer KEY'." : "Incorrect API key provided.",
        "invalid_request_error",
        null,
        "invalid_api_key",
      );
      return reply.code(401).send(errorBody(apiError));
    }
  });

  // Open to all (load balancers, probes); what it serves and how busy it is only with the key, when keys are set.
  app.get("/health", async (request) =>
    authorized(request.headers.authorization) ? { status: "ok", model: deps.modelId, parallel: deps.parallel, queued: pool.queueDepth } : { status: "ok" },
  );

  // The chat page (web/index.html), same origin as the API it talks to.
  const servePage = async (_request: FastifyRequest, reply: FastifyReply) => {
    const html = await webPage();
    if (html === null) throw notFound("This installation of kvkeep has no web page (web/index.html is missing from the package).");
    void reply
      .header("content-type", "text/html; charset=utf-8")
      .header("cache-control", "no-cache")
      // The page loads nothing from elsewhere and is never framed.
      .header("content-security-policy", "default-src 'self'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; img-src 'self' data:; frame-ancestors 'none'")
      .header("x-content-type-options", "nosniff");
    return html;
  };
  app.get("/", servePage);
  app.get("/index.html", servePage);

  // The named sessions kvkeep keeps for the caller's key (its scope only), for the page.
  app.get("/kvkeep/sessions", async (request) => {
    if (deps.root === undefined) throw notFound("This server lists no sessions.");
    return { object: "list", model: deps.modelId, data: await listSessions(deps.root, deps.modelId, scopes.get(request)) };
  });

  app.get("/metrics", async (_request, reply) => {
    void reply.header("content-type", metrics.registry.contentType);
    return metrics.registry.metrics();
  });

  const modelObject = () => ({ id: deps.modelId, object: "model", created: deps.modelCreated, owned_by: "kvkeep" });
  app.get("/v1/models", async () => ({ object: "list", data: [modelObject()] }));
  app.get<{ Params: { model: string } }>("/v1/models/:model", async (request) => {
    if (request.params.model !== deps.modelId) {
      throw new ApiError(404, `The model '${request.params.model}' does not exist.`, "invalid_request_error", "model", "model_not_found");
    }
    return modelObject();
  });

  // More messages than the context has tokens is refused by the schema, before its items are
  // validated one by one (Ajv checks maxItems first): see prompt-bounds.ts.
  const bodySchema = deps.promptBounds
    ? { ...chatCompletionBodySchema, properties: { ...chatCompletionBodySchema.properties, messages: { ...chatCompletionBodySchema.properties.messages, maxItems: deps.promptBounds.contextSize - 1 } } }
    : chatCompletionBodySchema;
  app.post<{ Body: ChatCompletionBody }>("/v1/chat/completions", { schema: { body: bodySchema } }, async (request, reply) => {
    const scope = scopes.get(request);
    const header = request.headers["x-kv-cache"];
    const turn = toTurnRequest(request.body, {
      modelId: deps.modelId,
      kvCacheHeader: Array.isArray(header) ? header[0] : header,
      cacheEnabled: deps.cacheEnabled,
    });
    // Before a slot and before rendering: a prompt that cannot fit is refused in O(messages).
    const cannotFit = deps.promptBounds ? promptCannotFit(turn.history, deps.promptBounds) : null;
    if (cannotFit !== null) throw new ApiError(400, cannotFit, "invalid_request_error", "messages", "context_length_exceeded");

    // A client that goes away — while queued, or mid-turn — aborts its turn.
    const controller = new AbortController();
    const onClose = (): void => {
      if (!reply.raw.writableFinished) controller.abort(new Error("the client disconnected"));
    };
    reply.raw.on("close", onClose);
    let lease;
    try {
      lease = await pool.acquire(controller.signal);
    } catch (error) {
      reply.raw.off("close", onClose);
      if (error instanceof QueueFullError) {
        const seconds = retryAfterSeconds(pool.queueDepth, deps.parallel, recentTurnMs);
        throw new ApiError(429, `The server is busy (${deps.parallel} running, ${pool.queueDepth} queued); retry after ${seconds} s.`, "rate_limit_error", null, "rate_limit_exceeded", {
          "retry-after": String(seconds),
        });
      }
      if (error instanceof QueueAbortedError) return reply.hijack(); // nobody is listening
      throw error;
    }
    running.add(controller);
    const started = performance.now();
    try {
      return await runTurn(turn, scope, lease.slot, controller.signal, reply);
    } finally {
      running.delete(controller);
      reply.raw.off("close", onClose);
      lease.release();
      recentTurnMs = 0.8 * recentTurnMs + 0.2 * (performance.now() - started);
    }
  });

  async function runTurn(turn: TurnRequest, scope: string | undefined, engine: CompletionEngine, signal: AbortSignal, reply: FastifyReply) {
    const head: CompletionHead = { id: completionId(), created: Math.floor(Date.now() / 1000), model: deps.modelId };
    const params: CompletionParams = {
      history: turn.history,
      kvCache: turn.kvCache,
      // The client's key decides whose caches the turn may use (none: the one shared space).
      ...(scope !== undefined ? { scope } : {}),
      maxTokens: turn.maxTokens,
      temperature: turn.temperature,
      topP: turn.topP,
      seed: turn.seed,
      stop: turn.stop,
      tools: turn.tools,
      toolChoice: turn.toolChoice,
      parallelToolCalls: turn.parallelToolCalls,
      responseFormat: turn.responseFormat,
      signal,
    };
    if (!turn.stream) {
      let result: CompletionResult;
      try {
        result = await complete(engine, params, turn);
      } catch (error) {
        if (!isKvKeepError(error, "ABORTED")) throw error;
        if (reply.raw.destroyed) return reply.hijack(); // the client went away
        throw shuttingDown();
      }
      return completionBody(head, result, finishReasonOf(result), usageOf(result.stats), turnReport(result.stats));
    }

    // Streaming. The head (status 200 and the role chunk) goes out with the first piece of
    // text, so a turn that fails before generating (e.g. a prompt longer than the context)
    // still gets its HTTP status.
    const raw = reply.raw;
    const usageField = turn.includeUsage ? null : undefined;
    let headSent = false;
    const write = (data: unknown): void => {
      if (!headSent) {
        headSent = true;
        reply.hijack();
        raw.writeHead(200, {
          "content-type": "text/event-stream; charset=utf-8",
          "cache-control": "no-cache",
          connection: "keep-alive",
          "x-accel-buffering": "no",
        });
        write(chunkBody(head, { delta: { role: "assistant", content: "" }, finishReason: null }, usageField));
      }
      if (!raw.destroyed && !raw.writableEnded) raw.write(sseEvent(data));
    };
    try {
      const onToken = (piece: string): void => write(chunkBody(head, { delta: { content: piece }, finishReason: null }, usageField));
      // A tool call streams as OpenAI's: its id, type and name first, then its arguments in pieces.
      const onToolCall = (d: ToolCallDelta): void => {
        const call: ToolCallChunk =
          d.name !== undefined
            ? { index: d.index, ...(d.id !== undefined ? { id: d.id } : {}), type: "function", function: { name: d.name, arguments: "" } }
            : { index: d.index, function: { arguments: d.arguments ?? "" } };
        write(chunkBody(head, { delta: { tool_calls: [call] }, finishReason: null }, usageField));
      };
      const result = await complete(engine, { ...params, onToken, onToolCall }, turn);
      write(chunkBody(head, { delta: {}, finishReason: finishReasonOf(result) }, usageField, turnReport(result.stats)));
      if (turn.includeUsage) write(chunkBody(head, null, usageOf(result.stats)));
      write("[DONE]");
    } catch (error) {
      const apiError = isKvKeepError(error, "ABORTED") ? shuttingDown() : toApiError(error as Error, logger);
      if (!headSent) {
        if (raw.destroyed) return reply.hijack(); // the client went away
        throw apiError;
      }
      write(errorBody(apiError)); // mid-stream: an error event, then the end of the stream
    } finally {
      if (headSent && !raw.destroyed) raw.end();
    }
    return reply;
  }

  /** Run the turn and record it; a failure is counted as a rollback and mapped to an API error. */
  async function complete(engine: CompletionEngine, params: CompletionParams, turn: TurnRequest): Promise<CompletionResult> {
    let result: CompletionResult;
    try {
      result = await engine.completion(params);
    } catch (error) {
      // A turn without a cache (kv_cache: false, --no-cache) has nothing to roll back.
      const cached = params.kvCache !== false;
      if (isKvKeepError(error, "ABORTED")) {
        if (cached) metrics.observeRollback("aborted");
        throw error;
      }
      // A key the request named that kvkeep refuses (KEY_*) is the client's mistake too.
      if (isKvKeepError(error) && error.code.startsWith("KEY_")) {
        throw new ApiError(400, error.message, "invalid_request_error", "kv_cache", "invalid_kv_cache");
      }
      if (isKvKeepError(error, "INVALID_ARGUMENT")) throw apiErrorOfArgument(error);
      if (cached) metrics.observeRollback("error");
      throw error;
    }
    metrics.observeTurn(result.stats, { cache: turn.kvCache !== false });
    return result;
  }

  return {
    app,
    abortAll(reason) {
      for (const controller of running) controller.abort(new Error(reason));
    },
  };
}
