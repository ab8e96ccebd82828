/**
 * What `createLlamaCppCompletion` takes and gives: its options, a call's parameters and the
 * adapter's interface. Its stats are every adapter's `CompletionStats` (shared/stats.ts).
 */
import type { LlamaContextOptions, SequenceEvaluateOptions } from "node-llama-cpp";
import type { Logger } from "../../logger.js";
import type { KvCacheStore } from "../../facade/kvkeep-store.js";
import type { CacheInfo } from "../../types.js";
import type { WarmFn } from "../../warm/types.js";
import type { CompletionResult } from "../shared/stats.js";
import type { ChatMessage } from "./messages.js";

/** A tool the model may be told about: its name enters the config hash. */
export interface LlamaTool {
  name: string;
  description?: string | undefined;
  /** JSON schema of the parameters (see json-schema.ts for what the grammar enforces). */
  params?: unknown;
  /** Refuse a schema with what the grammar cannot enforce, instead of ignoring that part. Default: false. */
  strict?: boolean | undefined;
}

/**
 * Which tool the model may call: `"auto"` (the default with tools) — it answers in text or
 * starts a call itself; `"none"` — text only (the tools are still described); `"required"` — it
 * calls one (or, where the chat wrapper has parallel calls, several) of the tools; `{ name }` —
 * it calls that tool.
 */
export type ToolChoice = "auto" | "none" | "required" | { name: string };

/**
 * The shape of a text reply: free text, any JSON object, or JSON valid for a schema (generated
 * under a grammar, see json-schema.ts for what a schema may use; `strict` refuses a schema with
 * what the grammar cannot enforce instead of ignoring it).
 */
export type ResponseFormat = { type: "text" } | { type: "json_object" } | { type: "json_schema"; schema: unknown; strict?: boolean | undefined; name?: string | undefined };

/**
 * A piece of a tool call as it is generated: first `{ index, id, name }`, then the
 * arguments' text in pieces `{ index, arguments }` that join to the call's `arguments`.
 */
export interface ToolCallDelta {
  index: number;
  id?: string;
  name?: string;
  arguments?: string;
}

/**
 * A node-llama-cpp 3 `LlamaModel`, described by the members kvkeep's types rely on rather
 * than imported: an app's model comes from the app's own copy of node-llama-cpp, and
 * node-llama-cpp's classes have private members, so TypeScript refuses a `LlamaModel` of one
 * copy where another copy's is declared (TS2322, "separate declarations of a private
 * property"). In a local-path install kvkeep's declarations would resolve node-llama-cpp
 * from the checkout's dev copy. Any copy's `LlamaModel` fits this.
 */
export interface LlamaModelLike {
  readonly filename: string | undefined;
  readonly fileInfo: object;
  readonly fileInsights: { readonly isRecurrent: boolean; readonly isHybrid: boolean; readonly swaSize: number | undefined };
  readonly trainContextSize: number;
  tokenize(text: string, specialTokens?: boolean): readonly number[];
  detokenize(tokens: readonly number[], specialTokens?: boolean): string;
  createContext(options?: object): Promise<object>;
}

/** A node-llama-cpp `ChatWrapper` from any copy of node-llama-cpp (see `LlamaModelLike`). */
export interface ChatWrapperLike {
  readonly wrapperName: string;
}

export interface LlamaCppCompletionOptions {
  /** The loaded model (node-llama-cpp's `LlamaModel`, from the app's copy). The adapter never disposes it. */
  model: LlamaModelLike;
  /** The kvkeep store. Default: the default store (root from `KVKEEP_DIR`, else the XDG cache dir). */
  store?: KvCacheStore | undefined;
  /** The model id caches are filed under. Default: the model's file name, made a safe path component. */
  modelId?: string | undefined;
  /** Context size in tokens. Default: the model's training context, at most 4096. */
  contextSize?: number | undefined;
  /**
   * CPU threads. Default: `os.availableParallelism()` — node-llama-cpp's own default is at
   * least 4, which on a 2-core machine makes small models hundreds of times slower.
   */
  threads?: number | undefined;
  /** Further context options (flash attention, KV cache types, batch size); they enter the fingerprint. */
  contextOptions?: Omit<LlamaContextOptions, "contextSize" | "threads" | "sequences"> | undefined;
  /** The chat wrapper (a node-llama-cpp `ChatWrapper`). Default: the one node-llama-cpp resolves for the model. */
  chatWrapper?: ChatWrapperLike | undefined;
  /**
   * Identifies model + state layout in each cache's manifest. Default: derived from the GGUF
   * metadata and tensor info, sampled weight bytes, file size, the llama.cpp release and the
   * context's size, flash attention and KV types (`fingerprintModel`).
   */
  fingerprint?: string | undefined;
  /**
   * The model's GGUF file, for the fingerprint's weight samples. Default: the path the model
   * was loaded from (read from node-llama-cpp).
   */
  modelPath?: string | undefined;
  /** Where the adapter logs. Default: silent. */
  logger?: Logger | undefined;
  /**
   * Start a turn from another conversation's cache when it shares more of the prompt than
   * the turn's own cache (regenerate, edit, fork, a new chat with the same system prompt),
   * found with `store.findPrefix` and loaded read-only with `store.borrowPrefix`. Models whose
   * KV cells cannot be erased (recurrent, hybrid, sliding-window) borrow exact ancestors only.
   * Default: true.
   */
  prefixReuse?: boolean | undefined;
  /**
   * Store states as content-addressed token chunks (docs/chunks-format.md): a turn writes
   * only its new tokens' chunks, its tail and its manifest; conversations sharing a prefix
   * store it once; states go to and from the engine through in-memory files. Applies to
   * attention models whose state kvkeep can split, on platforms with in-memory files (Linux,
   * native addon); sliding-window, recurrent, hybrid and M-RoPE models, and other platforms,
   * keep whole files (`stats.layout` says which), as does a store with a remote tier (it does
   * not move chunks yet). Default: true.
   */
  chunkedStates?: boolean | undefined;
  /**
   * The scope of every call that names none (`CompletionParams.scope`): whose conversations
   * these are. Calls of different scopes never share a cache or a prefix. Default: none (the
   * store's shared space).
   */
  scope?: string | undefined;
}

export interface CompletionParams {
  /**
   * The conversation so far, ending with the new user message — or, in an agent loop, with
   * the tool messages answering the last reply's calls (see `ChatMessage`).
   */
  history: readonly ChatMessage[];
  /** A session name (named cache), `true` (auto mode: keyed by the history) or `false` (no cache, cold). */
  kvCache: string | boolean;
  /**
   * Whose conversation this is — a user, a tenant, an API key (`SessionOptions.scope`): its
   * caches, and the caches its turns may start from, are that scope's only. The same
   * `kvCache` name in two scopes is two conversations. Default: the adapter's `scope`.
   */
  scope?: string | undefined;
  /**
   * Tools to describe to the model (`params`: a JSON schema of the arguments); their names
   * enter the config hash. A call's arguments are generated under a grammar for the schema.
   */
  tools?: readonly LlamaTool[] | undefined;
  /** Which tool the model may call. Default: `"auto"`. */
  toolChoice?: ToolChoice | undefined;
  /** Whether a reply may call several tools, where the chat wrapper can render that. Default: true. */
  parallelToolCalls?: boolean | undefined;
  /** The shape of a text reply. Default: free text. */
  responseFormat?: ResponseFormat | undefined;
  /** Called with each piece of a tool call as it is generated (see `ToolCallDelta`). */
  onToolCall?: ((delta: ToolCallDelta) => void) | undefined;
  /** Stop after this many generated tokens. Default: until the model ends its reply or the context is full. */
  maxTokens?: number | undefined;
  /**
   * Texts that end the reply (as OpenAI's `stop`), besides the chat wrapper's own: the reply
   * is cut before the first one that appears, and `finishReason` is `"stop"`.
   */
  stop?: readonly string[] | undefined;
  /** Sampling, passed to the engine as given; nothing is added (no repeat penalty unless asked). */
  temperature?: number | undefined;
  topK?: number | undefined;
  topP?: number | undefined;
  minP?: number | undefined;
  seed?: number | undefined;
  repeatPenalty?: SequenceEvaluateOptions["repeatPenalty"];
  /**
   * Aborts the call: checked while waiting for the cache, before generation starts and
   * after each generated token (not inside one evaluation batch). The turn rolls back and
   * the call rejects with ABORTED.
   */
  signal?: AbortSignal | undefined;
  /**
   * Names the conversation in the store's turn events (warming). Default: the session name;
   * in auto mode, an id derived from the history's opening (see `TurnHandle.conversationId`).
   */
  conversationId?: string | undefined;
  /**
   * Called with each piece of generated text as it is produced. The pieces join to exactly
   * the returned text: text that might begin a stop sequence is held back until it cannot.
   */
  onToken?: ((text: string) => void) | undefined;
}

export interface LlamaCppCompletion {
  /** Run one completion. Calls on one adapter are queued and run one at a time. */
  completion(params: CompletionParams): Promise<CompletionResult>;
  /**
   * Load a committed cache into the adapter's idle sequence (in its queue, between
   * completions), so the next turn on that cache skips the load. Only a cache trusted for
   * this model is loaded; resolves to what was loaded, or null (missing, untrusted, or held
   * by a turn, or `signal` aborted).
   */
  preload(cachePath: string, options?: { signal?: AbortSignal }): Promise<CacheInfo | null>;
  /**
   * A warm strategy for `createCacheWarmer`/`createStoreWarmer`: preloads the cache a
   * conversation's last turn settled on (`ctx.cachePath`) and reports its tokens as read.
   */
  readonly preloadWarm: WarmFn;
  /** Wait for queued calls and free the context (not the model). */
  dispose(): Promise<void>;
}
