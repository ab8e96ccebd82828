/**
 * What the cache warmer remembers of one conversation (`Entry`), and the views of it the
 * warmer hands out or compares (its snapshot, state and settings). Pure: no timers, no storage.
 */
import { type ConversationSettings, type ConversationState, defaultSettings } from "./pure.js";
import type { TimerId, WarmContext } from "./types.js";
import type { WarmerStateSnapshot } from "./warmer-api.js";

/** A warm that was started: its arm's token, and the controller that aborts it when it goes stale. */
export interface InFlight {
  readonly token: number;
  readonly controller: AbortController;
}

/** One conversation's warming: settings, turn state, the pending timer and warms in flight. */
export interface Entry {
  readonly id: string;
  enabled: boolean;
  intervalMs: number;
  /** Settings changed in memory before the stored ones were loaded: they win over the stored ones. */
  overrides: { enabled?: boolean; intervalMs?: number };
  loaded: boolean;
  loading: Promise<void> | null;
  active: boolean;
  /** Settled at least once in this warmer: there is a context to warm. */
  settled: boolean;
  lastPct: number | null;
  token: number;
  timer: { readonly handle: TimerId; readonly token: number } | null;
  inflight: Set<InFlight>;
  ctx: WarmContext;
  /** Settings writes, in call order; never rejects. */
  persistChain: Promise<void>;
  pending: Set<Promise<void>>;
}

export const EMPTY_CONTEXT: WarmContext = Object.freeze({});

/** A conversation the warmer has not seen yet: default settings, nothing loaded, idle. */
export function newEntry(conversationId: string): Entry {
  const defaults = defaultSettings();
  return {
    id: conversationId,
    enabled: defaults.enabled,
    intervalMs: defaults.intervalMs,
    overrides: {},
    loaded: false,
    loading: null,
    active: false,
    settled: false,
    lastPct: null,
    token: 0,
    timer: null,
    inflight: new Set(),
    ctx: EMPTY_CONTEXT,
    persistChain: Promise.resolve(),
    pending: new Set(),
  };
}

/** What the pure rules (`shouldWarm`) judge. */
export function stateOf(entry: Entry): ConversationState {
  return {
    enabled: entry.enabled,
    intervalMs: entry.intervalMs,
    active: entry.active,
    lastPct: entry.lastPct,
    token: entry.token,
  };
}

/** The persisted part. */
export function settingsOf(entry: Entry): ConversationSettings {
  return { enabled: entry.enabled, intervalMs: entry.intervalMs };
}

/** What a UI sees (a fresh object); `warming` only for a warm of the current arm. */
export function snapshotOf(entry: Entry): WarmerStateSnapshot {
  let warming = false;
  for (const flight of entry.inflight) if (flight.token === entry.token) warming = true;
  return {
    enabled: entry.enabled,
    intervalMs: entry.intervalMs,
    lastPct: entry.lastPct,
    active: entry.active,
    armed: entry.timer !== null,
    warming,
  };
}

/** Whether a UI would see no change (`onSurfaceChange` fires only on a difference). */
export function sameSnapshot(a: WarmerStateSnapshot, b: WarmerStateSnapshot): boolean {
  return (
    a.enabled === b.enabled &&
    a.intervalMs === b.intervalMs &&
    a.lastPct === b.lastPct &&
    a.active === b.active &&
    a.armed === b.armed &&
    a.warming === b.warming
  );
}
