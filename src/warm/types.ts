/**
 * The injected parts a cache warmer is built from (DESIGN.md §3).
 * Types only: the warmer, the storages and the strategies all share them.
 */

/** What a warm did, in the usage shape an LLM provider reports (all token counts). */
export interface WarmUsage {
  /** Tokens the warm covered in total. */
  readonly inputTokens: number;
  /** Tokens the warm generated (0 for local strategies). */
  readonly outputTokens: number;
  /** Of `inputTokens`, how many were served from the cache: `lastPct` is read / input. */
  readonly cacheReadTokens: number;
  /** Tokens the warm wrote to the cache. */
  readonly cacheWriteTokens: number;
}

/** A warm that did not happen (nothing to warm, file missing, engine busy...). Not thrown: returned. */
export interface WarmError {
  readonly error: string;
}

/** What a `warm` function resolves to. */
export type WarmResult = WarmUsage | WarmError;

/**
 * The context recorded at a conversation's last settle and handed to `warm`.
 * An open record: strategies read what they need; kvkeep's own read these fields.
 */
export interface WarmContext {
  /** The conversation's committed cache file (what `prefetch` reads). */
  readonly cachePath?: string;
  /** The model the cache belongs to. */
  readonly modelId?: string;
  /** Tokens in the cached state, if known (what `prefetch` reports). */
  readonly tokenCount?: number;
  readonly [key: string]: unknown;
}

/** The third argument of a `warm` call. */
export interface WarmCallOptions {
  /**
   * Aborted as soon as the warm goes stale (a turn starts, the conversation is
   * disabled, the warmer is disposed). A strategy should stop its work when it fires;
   * its result is discarded either way.
   */
  readonly signal: AbortSignal;
}

/**
 * A warm strategy: keep one conversation's cache hot. Resolves to usage or `{ error }`;
 * a throw or rejection is tolerated (the warmer turns it into an error result) but
 * strategies should return `{ error }` instead.
 *
 * This is the extension point for strategies: `prefetch` (page cache, in `strategies.ts`)
 * and `preload` (load the state into an idle engine sequence; the node-llama-cpp adapter
 * provides it) are both `WarmFn`s.
 */
export type WarmFn = (conversationId: string, ctx: WarmContext, options: WarmCallOptions) => Promise<WarmResult>;

/** An async string key/value store: where warming keeps per-conversation settings. */
export interface SettingsStorage {
  /** The value under `key`, or `null` when there is none (or it is unreadable). */
  get(key: string): Promise<string | null>;
  set(key: string, value: string): Promise<void>;
  delete(key: string): Promise<void>;
  has(key: string): Promise<boolean>;
  /** All keys, or those starting with `prefix`. */
  keys(prefix?: string): Promise<string[]>;
}

/** An opaque timer handle, whatever the `setTimer` in use returns. */
export type TimerId = unknown;

/** Timers, injectable so tests (and hosts with their own scheduler) control time. */
export interface TimerDeps {
  /** Call `fn` once after `ms` milliseconds; returns a handle for `clearTimer`. */
  setTimer(fn: () => void, ms: number): TimerId;
  /** Cancel a timer; a handle that already fired or was cleared is ignored. */
  clearTimer(id: TimerId): void;
}
