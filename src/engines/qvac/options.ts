/**
 * What `createQvacCompletion` takes and gives: its options, a call's parameters and the
 * adapter's interface. Its stats are every adapter's `CompletionStats` (shared/stats.ts).
 */
import type { KvCacheStore } from "../../facade/kvkeep-store.js";
import type { Logger } from "../../logger.js";
import type { CompletionResult, CompletionStats } from "../shared/stats.js";
import type { QvacGenerationParams, QvacMessage } from "./model.js";

export interface QvacCompletionOptions {
  /**
   * A loaded `LlmLlamacpp` (`@qvac/llm-llamacpp` 0.53.0). Create it with `opts: { stats: true }`
   * for token counts in `stats` (without, they are 0; `hit` and `source` are right either way).
   * Never unloaded by the adapter.
   */
  model: unknown;
  /** The kvkeep store. Default: the default store (root from `KVKEEP_DIR`, else the XDG cache dir). */
  store?: KvCacheStore | undefined;
  /** The model id caches are filed under: one safe path component. */
  modelId: string;
  /**
   * Identifies model + state layout in each cache's manifest. Default: sampled bytes of the
   * model files, the addon version and the load-time settings that shape the KV state.
   */
  fingerprint?: string | undefined;
  /** Where the adapter logs. Default: silent. */
  logger?: Logger | undefined;
  /**
   * The scope of every call that names none (`QvacCompletionParams.scope`): whose
   * conversations these are. Default: none (the store's shared space).
   */
  scope?: string | undefined;
}

export interface QvacCompletionParams {
  /** The conversation so far, ending with the new user message. */
  history: readonly QvacMessage[];
  /** A session name (named cache), `true` (auto mode: keyed by the history) or `false` (no cache). */
  kvCache: string | boolean;
  /**
   * Whose conversation this is — a user, a tenant, an API key (`SessionOptions.scope`): the
   * same `kvCache` name in two scopes is two conversations. Default: the adapter's `scope`.
   */
  scope?: string | undefined;
  /** Aborts the call: the addon's job is cancelled, the turn rolls back, the call rejects with ABORTED. */
  signal?: AbortSignal | undefined;
  /** Passed to the addon as `generationParams` (`temp`, `top_p`, `predict`, `seed`, …). */
  generationParams?: QvacGenerationParams | undefined;
  /** Each piece of text as the addon streams it. */
  onToken?: ((piece: string) => void) | undefined;
}

/** Every adapter's `CompletionStats` (shared/stats.ts): what each field means on QVAC is said there. */
export type QvacCompletionStats = CompletionStats;

export type QvacCompletionResult = CompletionResult;

export interface QvacCompletion {
  /** Run one completion. Calls on one adapter run one at a time. */
  completion(params: QvacCompletionParams): Promise<QvacCompletionResult>;
  /** Wait for queued calls; further calls reject with STORE_CLOSED. The model stays loaded. */
  dispose(): Promise<void>;
}
