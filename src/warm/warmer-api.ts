/** The cache warmer's interface (DESIGN.md §3): what an app gives it and calls on it. */
import type { Logger } from "../logger.js";
import type { ConversationSettings } from "./pure.js";
import type { SettingsStorage, TimerDeps, WarmContext, WarmFn } from "./types.js";

/** What a UI shows for one conversation. A fresh object on every call. */
export interface WarmerStateSnapshot {
  /** Warming is on for this conversation (persisted setting). */
  readonly enabled: boolean;
  /** The refresh interval in ms (persisted setting). */
  readonly intervalMs: number;
  /** Cache-hit percentage of the last warm that reported usage; `null` before the first. */
  readonly lastPct: number | null;
  /** A turn is running (between `onTurnStarted` and `onTurnSettled`). */
  readonly active: boolean;
  /** A warm timer is pending. */
  readonly armed: boolean;
  /** A warm for the current arm is running (the timer fired, the result is not in yet). */
  readonly warming: boolean;
}

export interface CacheWarmerDeps {
  /** The warm strategy (e.g. `createPrefetchWarm()`, or the node-llama-cpp adapter's preload). Required. */
  readonly warm: WarmFn;
  /** Where per-conversation settings persist (e.g. `createFileSettingsStorage(dir)`). Required. */
  readonly storage: SettingsStorage;
  /** Where the warmer logs (skips and discards at debug, thrown warms at warn). Default: silent. */
  readonly logger?: Logger;
  /** Timers. Default: `setTimeout`/`clearTimeout`, `unref()`ed so a warmer never keeps the process alive. */
  readonly timers?: TimerDeps;
  /**
   * Called with a conversation id whenever its {@link WarmerStateSnapshot} changed
   * (lastPct, enabled, interval, armed, active, warming). Called synchronously, after the
   * change; a throw is logged and ignored. Never called after `dispose()`. Default: none.
   */
  readonly onSurfaceChange?: (conversationId: string) => void;
}

export interface CacheWarmer {
  /** A turn started: mark the conversation active, cancel its timer and invalidate (abort) any warm in flight. */
  onTurnStarted(conversationId: string): void;
  /**
   * A turn settled: record `ctx` (what the next warm gets; omitted means `{}`), mark the
   * conversation idle and arm its timer under a fresh token if it is enabled. If its saved
   * settings are not loaded yet they are loaded first; a start or settle that happens
   * meanwhile supersedes this arm.
   */
  onTurnSettled(conversationId: string, ctx?: WarmContext): void;
  /**
   * A snapshot for a UI. If the conversation's settings were never loaded, this starts
   * loading them in the background (and `onSurfaceChange` fires if they differ from the
   * defaults shown meanwhile); `await load(id)` to get them loaded.
   */
  getState(conversationId: string): WarmerStateSnapshot;
  /** The context recorded at the last settle (`{}` if none). */
  getContext(conversationId: string): WarmContext;
  /**
   * Turn warming on or off and persist it. `false` cancels the timer and any warm in flight
   * at once; `true` arms the timer if the conversation is idle (has settled, no turn, no
   * timer, no warm running). Resolves to the persisted settings once written; rejects
   * (`INVALID_ARGUMENT`) for a non-boolean, (`STORE_CLOSED`) after `dispose()`, or with the
   * storage's error if the write failed (the in-memory change stays).
   */
  setEnabled(conversationId: string, enabled: boolean): Promise<ConversationSettings>;
  /**
   * Change the refresh interval and persist it. The value is clamped (rounded, at least
   * `MIN_INTERVAL_MS`). An armed timer is re-armed to fire the new interval from now;
   * an unarmed conversation stays unarmed. Rejects (`INVALID_ARGUMENT`) for a value that
   * is not a finite number, otherwise as `setEnabled`.
   */
  setIntervalMs(conversationId: string, intervalMs: number): Promise<ConversationSettings>;
  /** Load the conversation's saved settings (once; later calls reuse them) and return its snapshot. */
  load(conversationId: string): Promise<WarmerStateSnapshot>;
  /**
   * Resolves when the background work of one conversation (or of all, without an id) has
   * finished: settings loads, settings writes, warms in flight and what they trigger.
   * Never rejects. Waits as long as a warm runs, a superseded one too (until its strategy
   * settles after the abort), so tests can await the discarding of a stale result.
   */
  ready(conversationId?: string): Promise<void>;
  /** Clear every timer and abort warms in flight; later events are no-ops and late results are dropped. Idempotent. */
  dispose(): void;
}
