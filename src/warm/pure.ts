/**
 * The pure core of cache warming: no I/O, no timers, no ambient state.
 * Every function here maps its input to its output, so the warmer's decisions
 * can be tested without mocks (DESIGN.md §3, from seed 000).
 */

/** The refresh interval a conversation gets when nothing (valid) is stored: 4 minutes. */
export const DEFAULT_INTERVAL_MS = 240_000;

/** The shortest refresh interval kvkeep accepts: 1 second. Shorter values are raised to it. */
export const MIN_INTERVAL_MS = 1_000;

/**
 * The longest refresh interval kvkeep accepts: 2^31 − 1 ms (about 24.8 days).
 * Node's `setTimeout` treats anything longer as 1 ms, which would turn a huge
 * interval into a busy loop, so longer values are lowered to it.
 */
export const MAX_INTERVAL_MS = 2_147_483_647;

/** Persisted per-conversation settings: the only thing warming ever writes to storage. */
export interface ConversationSettings {
  /** Whether the conversation is warmed at all. Default: `true`. */
  readonly enabled: boolean;
  /** Milliseconds between a settle (or a finished warm) and the next warm. Default: {@link DEFAULT_INTERVAL_MS}. */
  readonly intervalMs: number;
}

/** A conversation's full runtime state (in memory only, never persisted). */
export interface ConversationState extends ConversationSettings {
  /** A turn is running: never warm now. */
  readonly active: boolean;
  /** The cache-hit percentage of the last warm that completed with usage, `null` before the first. */
  readonly lastPct: number | null;
  /** The current arm token; a timer or warm holding any other token is stale. */
  readonly token: number;
}

/** The settings a conversation has when nothing valid is stored. */
export function defaultSettings(): ConversationSettings {
  return { enabled: true, intervalMs: DEFAULT_INTERVAL_MS };
}

/**
 * Cache-hit percentage of a warm: `round(clamp(cacheReadTokens / inputTokens, 0, 1) * 100)`,
 * an integer in 0..100. `inputTokens <= 0` (or NaN) gives 0; a NaN read count gives 0.
 */
export function computeCachePct(inputTokens: number, cacheReadTokens: number): number {
  if (!(inputTokens > 0)) return 0;
  const ratio = cacheReadTokens / inputTokens;
  if (Number.isNaN(ratio)) return 0;
  return Math.round(Math.min(1, Math.max(0, ratio)) * 100);
}

/**
 * Whether a timer holding `token` may start a warm now:
 * the conversation is enabled, idle (no turn running) and `token` is still current.
 */
export function shouldWarm(state: ConversationState, token: number): boolean {
  return state.enabled && !state.active && isTokenCurrent(state.token, token);
}

/** Whether work started under `expected` is still current (no newer arm, start or cancel since). */
export function isTokenCurrent(current: number, expected: number): boolean {
  return current === expected;
}

/**
 * The one place an interval is clamped (used by {@link parseSettings} and `setIntervalMs`):
 * finite values are rounded and kept within {@link MIN_INTERVAL_MS}..{@link MAX_INTERVAL_MS}
 * (so `<= 0` gives the minimum); a non-finite value has no meaningful clamp and gives
 * {@link DEFAULT_INTERVAL_MS}.
 */
export function clampIntervalMs(ms: number): number {
  if (!Number.isFinite(ms)) return DEFAULT_INTERVAL_MS;
  if (ms <= 0) return MIN_INTERVAL_MS;
  return Math.min(MAX_INTERVAL_MS, Math.max(MIN_INTERVAL_MS, Math.round(ms)));
}

/**
 * Settings from their stored form. Never throws: `null`, malformed JSON and anything
 * that is not a plain object give the defaults; a non-boolean `enabled` gives `true`;
 * a finite numeric `intervalMs` is clamped ({@link clampIntervalMs}), anything else
 * (missing, NaN — which JSON stores as `null` —, a string) gives the default.
 */
export function parseSettings(raw: string | null): ConversationSettings {
  if (raw === null) return defaultSettings();
  let parsed: unknown;
  try {
    parsed = JSON.parse(raw);
  } catch {
    return defaultSettings();
  }
  if (typeof parsed !== "object" || parsed === null || Array.isArray(parsed)) return defaultSettings();
  const record = parsed as Record<string, unknown>;
  const enabled = typeof record["enabled"] === "boolean" ? record["enabled"] : true;
  const interval = record["intervalMs"];
  const intervalMs = typeof interval === "number" ? clampIntervalMs(interval) : DEFAULT_INTERVAL_MS;
  return { enabled, intervalMs };
}

/** The stored form of settings (JSON with exactly `enabled` and `intervalMs`). */
export function serializeSettings(settings: ConversationSettings): string {
  return JSON.stringify({ enabled: settings.enabled, intervalMs: settings.intervalMs });
}

/** The storage key of a conversation's settings: `settings:<conversationId>`. */
export function settingsKey(conversationId: string): string {
  return `settings:${conversationId}`;
}
