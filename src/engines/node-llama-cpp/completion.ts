/**
 * A completion handler over a node-llama-cpp model that keeps each conversation's KV cache
 * with kvkeep: the turn skeleton (shared/turn.ts) driving the node-llama-cpp engine half
 * (engine.ts) — begin the turn (priming the system prompt when the cache is missing), load
 * the state, evaluate only what the cache does not hold, generate, save to `savePath`,
 * commit, and roll back from `finally` on abort or error — plus `preload`, which loads a
 * cache into the idle engine between completions.
 */
import { type ChatWrapper, resolveChatWrapper } from "node-llama-cpp";
import { getDefaultStore } from "../../facade/default-store.js";
import { KvKeepError } from "../../errors.js";
import { silentLogger } from "../../logger.js";
import type { KvCacheStore } from "../../facade/kvkeep-store.js";
import type { CacheInfo } from "../../types.js";
import type { WarmFn } from "../../warm/types.js";
import type { CompletionResult } from "../shared/stats.js";
import { CompletionTurns } from "../shared/turn.js";
import { type EngineOptions, LlamaCppEngine, type OpenedLlama } from "./engine.js";
import { modelIdFromModel } from "./fingerprint.js";
import { encodeHistory } from "./messages.js";
import type { CompletionParams, LlamaCppCompletion, LlamaCppCompletionOptions } from "./options.js";

export type {
  ChatWrapperLike,
  CompletionParams,
  LlamaCppCompletion,
  LlamaCppCompletionOptions,
  LlamaModelLike,
  ResponseFormat,
  ToolCallDelta,
  ToolChoice,
} from "./options.js";
export type { CompletionResult, CompletionStats, ToolCall } from "../shared/stats.js";
export type { ChatMessage } from "./messages.js";

export class LlamaCppCompletionImpl implements LlamaCppCompletion {
  readonly #store: KvCacheStore;
  readonly #modelId: string;
  readonly #engine: LlamaCppEngine;
  readonly #turns: CompletionTurns<CompletionParams, OpenedLlama>;

  constructor(given: LlamaCppCompletionOptions) {
    if (!given?.model) throw new KvKeepError("INVALID_ARGUMENT", "createLlamaCppCompletion needs a loaded model.", { argument: "model" });
    const options = given as unknown as EngineOptions;
    this.#store = options.store ?? getDefaultStore();
    this.#modelId = options.modelId ?? modelIdFromModel(options.model);
    const wrapper: ChatWrapper = options.chatWrapper ?? resolveChatWrapper(options.model);
    this.#engine = new LlamaCppEngine(options, this.#store, this.#modelId, wrapper, options.logger ?? silentLogger);
    this.#turns = new CompletionTurns(this.#engine, {
      store: this.#store,
      modelId: this.#modelId,
      scope: options.scope,
      logger: options.logger,
    });
  }

  completion(params: CompletionParams): Promise<CompletionResult> {
    // Tool calls and results become messages the skeleton can key (messages.ts).
    let encoded: CompletionParams;
    try {
      encoded = params && typeof params === "object" ? { ...params, history: encodeHistory(params.history) } : params;
    } catch (error) {
      return Promise.reject(error);
    }
    return this.#turns.completion(encoded);
  }

  preload(cachePath: string, options: { signal?: AbortSignal } = {}): Promise<CacheInfo | null> {
    return this.#turns.exclusive(async () => {
      if (options.signal?.aborted) return null;
      // Only this adapter's caches: another model's may share a fingerprint given by hand
      // (and one of another fingerprint would be refused, and removed, as untrusted).
      if (this.#store.locateCache(cachePath)?.modelId !== this.#modelId) return null;
      return this.#engine.preload(await this.#turns.open(), cachePath, options.signal);
    });
  }

  readonly preloadWarm: WarmFn = async (_conversationId, ctx, options) => {
    if (typeof ctx.cachePath !== "string") return { error: "nothing to preload: the last turn named no cache" };
    try {
      const cache = await this.preload(ctx.cachePath, { signal: options.signal });
      if (!cache) return { error: `cache not preloaded (missing, untrusted, in use, or aborted): ${ctx.cachePath}` };
      const tokens = cache.tokenCount ?? 1;
      return { inputTokens: tokens, cacheReadTokens: tokens, outputTokens: 0, cacheWriteTokens: 0 };
    } catch (error) {
      return { error: `preload failed: ${(error as Error)?.message ?? String(error)}` };
    }
  };

  dispose(): Promise<void> {
    return this.#turns.dispose();
  }
}

/** A completion handler over `options.model` that keeps conversations' KV caches with kvkeep. */
export function createLlamaCppCompletion(options: LlamaCppCompletionOptions): LlamaCppCompletion {
  return new LlamaCppCompletionImpl(options);
}
