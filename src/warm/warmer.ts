/**
 * The cache warmer: per-conversation timers armed when a turn settles and cancelled
 * when a turn starts, each arm under a fresh token so stale work is dropped
 * (DESIGN.md §3, from seed 000).
 *
 * Two things differ from the seed on purpose:
 * - Saved settings are loaded from storage before a conversation is first armed, so a
 *   new warmer on the same storage (after a restart) honours them. The seed only read
 *   storage inside `setEnabled`, so a disabled conversation warmed again after a restart.
 * - A `warm` that throws or rejects is an error result: logged, re-armed, never an
 *   unhandled rejection.
 */
import { KvKeepError } from "../errors.js";
import { type Logger, logLine, silentLogger } from "../logger.js";
import { EMPTY_CONTEXT, type Entry, type InFlight, newEntry, sameSnapshot, settingsOf, snapshotOf, stateOf } from "./conversation-entry.js";
import { clampIntervalMs, computeCachePct, isTokenCurrent, parseSettings, serializeSettings, settingsKey, shouldWarm } from "./pure.js";
import type { TimerDeps, WarmResult } from "./types.js";
import type { CacheWarmer, CacheWarmerDeps, WarmerStateSnapshot } from "./warmer-api.js";

const realTimers: TimerDeps = {
  setTimer(fn, ms) {
    const timer = setTimeout(fn, ms);
    // Fake timers (tests) may hand back a handle without unref.
    if (typeof (timer as { unref?: unknown }).unref === "function") timer.unref();
    return timer;
  },
  clearTimer(id) {
    clearTimeout(id as ReturnType<typeof setTimeout>);
  },
};

function messageOf(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}

function checkConversationId(conversationId: unknown): asserts conversationId is string {
  if (typeof conversationId !== "string" || conversationId.length === 0) {
    throw new KvKeepError("INVALID_ARGUMENT", "conversationId must be a non-empty string.", {
      argument: "conversationId",
    });
  }
}

/** A warm's resolution as a `WarmResult`, or an error result if it is neither usage nor `{ error }`. */
function normaliseResult(value: unknown): WarmResult {
  if (typeof value === "object" && value !== null) {
    const record = value as Record<string, unknown>;
    if ("error" in record) return { error: typeof record["error"] === "string" ? record["error"] : String(record["error"]) };
    if (typeof record["inputTokens"] === "number" && typeof record["cacheReadTokens"] === "number") {
      return value as WarmResult;
    }
  }
  return { error: "warm resolved to neither usage ({ inputTokens, cacheReadTokens, ... }) nor { error }" };
}

export function createCacheWarmer(deps: CacheWarmerDeps): CacheWarmer {
  if (typeof deps?.warm !== "function") {
    throw new KvKeepError("INVALID_ARGUMENT", "createCacheWarmer needs deps.warm, a function.", { argument: "warm" });
  }
  if (typeof deps.storage?.get !== "function" || typeof deps.storage.set !== "function") {
    throw new KvKeepError("INVALID_ARGUMENT", "createCacheWarmer needs deps.storage with get/set/delete/has/keys.", {
      argument: "storage",
    });
  }
  const { warm, storage } = deps;
  const logger = deps.logger ?? silentLogger;
  const timers = deps.timers ?? realTimers;
  const onSurfaceChange = deps.onSurfaceChange;

  const entries = new Map<string, Entry>();
  let nextToken = 1;
  let disposed = false;
  /** Snapshots taken at the start of the outermost change, per entry (see `change`). */
  let batch: Map<Entry, WarmerStateSnapshot> | null = null;

  function log(level: keyof Logger, message: string, fields: Record<string, unknown>): void {
    try {
      logger[level](logLine(`warm: ${message}`, fields));
    } catch {
      // A broken logger must not break warming.
    }
  }

  function entryOf(conversationId: string): Entry {
    let entry = entries.get(conversationId);
    if (entry === undefined) {
      entry = newEntry(conversationId);
      entries.set(conversationId, entry);
    }
    return entry;
  }

  /**
   * Run a change to `entry`; when the outermost change ends, call `onSurfaceChange` once
   * for each entry whose snapshot differs from before.
   */
  function change<T>(entry: Entry, fn: () => T): T {
    const outermost = batch === null;
    const current = batch ?? new Map<Entry, WarmerStateSnapshot>();
    batch = current;
    if (!current.has(entry)) current.set(entry, snapshotOf(entry));
    try {
      return fn();
    } finally {
      if (outermost) {
        batch = null;
        if (!disposed && onSurfaceChange !== undefined) {
          for (const [changed, before] of current) {
            if (sameSnapshot(before, snapshotOf(changed))) continue;
            try {
              onSurfaceChange(changed.id);
            } catch (error) {
              log("error", "onSurfaceChange threw; ignored", { conversation: changed.id, error: messageOf(error) });
            }
          }
        }
      }
    }
  }

  /** Keep background work observable by `ready()`; it never rejects. */
  function track(entry: Entry, work: Promise<unknown>): void {
    const settled: Promise<void> = work.then(
      () => undefined,
      (error: unknown) => log("error", "background work failed", { conversation: entry.id, error: messageOf(error) }),
    );
    entry.pending.add(settled);
    void settled.then(() => entry.pending.delete(settled));
  }

  /** Clear the timer, take a fresh token (so everything under the old one is stale) and abort warms in flight. */
  function invalidate(entry: Entry, why: string): void {
    if (entry.timer !== null) {
      timers.clearTimer(entry.timer.handle);
      entry.timer = null;
    }
    entry.token = nextToken++;
    for (const flight of entry.inflight) {
      if (!flight.controller.signal.aborted) {
        flight.controller.abort(new KvKeepError("ABORTED", `warm of conversation ${entry.id} superseded: ${why}.`));
      }
    }
  }

  /** Arm under a fresh token if the conversation is enabled and idle (replacing any pending timer). */
  function arm(entry: Entry, why: string): void {
    invalidate(entry, why);
    if (disposed || !entry.enabled || entry.active) return;
    const token = entry.token;
    const handle = timers.setTimer(() => fire(entry, token), entry.intervalMs);
    entry.timer = { handle, token };
  }

  function fire(entry: Entry, token: number): void {
    if (disposed) return;
    change(entry, () => {
      if (entry.timer?.token === token) entry.timer = null;
      if (!shouldWarm(stateOf(entry), token)) {
        log("debug", "skipped (stale timer, disabled or mid-turn)", { conversation: entry.id });
        return;
      }
      // runWarm's synchronous part (marking the warm in flight) joins this change.
      track(entry, runWarm(entry, token));
    });
  }

  async function runWarm(entry: Entry, token: number): Promise<void> {
    const flight: InFlight = { token, controller: new AbortController() };
    change(entry, () => entry.inflight.add(flight));
    log("debug", "warming", { conversation: entry.id });

    let result: WarmResult;
    let thrown: unknown;
    let threw = false;
    try {
      // Inside the try: a synchronous throw is caught as well as a rejection.
      result = normaliseResult(await warm(entry.id, entry.ctx, { signal: flight.controller.signal }));
    } catch (error) {
      threw = true;
      thrown = error;
      result = { error: messageOf(error) };
    }

    if (disposed) {
      entry.inflight.delete(flight);
      return;
    }
    change(entry, () => {
      entry.inflight.delete(flight);
      if (!isTokenCurrent(entry.token, token)) {
        log("debug", "discarded a stale result (superseded while in flight)", { conversation: entry.id });
        return;
      }
      if ("error" in result) {
        if (threw) log("warn", "warm threw; treated as an error result", { conversation: entry.id, error: messageOf(thrown) });
        else log("debug", "warm returned an error result", { conversation: entry.id, error: result.error });
      } else {
        entry.lastPct = computeCachePct(result.inputTokens, result.cacheReadTokens);
        log("debug", "warmed", { conversation: entry.id, pct: entry.lastPct });
      }
      arm(entry, "re-armed after a warm");
    });
  }

  /** Load the saved settings once. Never rejects: an unreadable store means defaults (and a retry next time). */
  function ensureLoaded(entry: Entry): Promise<void> {
    if (entry.loaded) return Promise.resolve();
    if (entry.loading !== null) return entry.loading;
    const loading = Promise.resolve()
      .then(() => storage.get(settingsKey(entry.id)))
      .then(
        (raw): { ok: boolean; raw: string | null } => ({ ok: true, raw: typeof raw === "string" ? raw : null }),
        (error: unknown) => {
          log("warn", "could not read saved settings; using defaults", { conversation: entry.id, error: messageOf(error) });
          return { ok: false, raw: null };
        },
      )
      .then(({ ok, raw }) => {
        entry.loading = null;
        change(entry, () => {
          const saved = parseSettings(raw);
          entry.enabled = entry.overrides.enabled ?? saved.enabled;
          entry.intervalMs = entry.overrides.intervalMs ?? saved.intervalMs;
          if (ok) {
            entry.loaded = true;
            entry.overrides = {};
          }
          if (!entry.enabled && entry.timer !== null) invalidate(entry, "disabled by saved settings");
        });
      });
    entry.loading = loading;
    track(entry, loading);
    return loading;
  }

  function persist(entry: Entry): Promise<void> {
    // Serialised per conversation, and each write takes the settings current when it runs.
    const write = entry.persistChain.then(() => storage.set(settingsKey(entry.id), serializeSettings(settingsOf(entry))));
    entry.persistChain = write.catch((error: unknown) => {
      log("warn", "could not save settings", { conversation: entry.id, error: messageOf(error) });
    });
    track(entry, entry.persistChain);
    return write;
  }

  function checkOpen(): void {
    if (disposed) {
      throw new KvKeepError("STORE_CLOSED", "This cache warmer was disposed; create a new one to change settings.");
    }
  }

  function isIdle(entry: Entry): boolean {
    return entry.settled && !entry.active && entry.timer === null && !snapshotOf(entry).warming;
  }

  return {
    onTurnStarted(conversationId) {
      checkConversationId(conversationId);
      if (disposed) return;
      const entry = entryOf(conversationId);
      change(entry, () => {
        entry.active = true;
        invalidate(entry, "a turn started");
      });
      // Give the settle a head start: with settings loaded it arms at once.
      void ensureLoaded(entry);
    },

    onTurnSettled(conversationId, ctx) {
      checkConversationId(conversationId);
      if (ctx !== undefined && (typeof ctx !== "object" || ctx === null || Array.isArray(ctx))) {
        throw new KvKeepError("INVALID_ARGUMENT", "onTurnSettled ctx must be an object when given.", { argument: "ctx" });
      }
      if (disposed) return;
      const entry = entryOf(conversationId);
      change(entry, () => {
        entry.ctx = ctx === undefined ? EMPTY_CONTEXT : Object.freeze({ ...ctx });
        entry.active = false;
        entry.settled = true;
        if (entry.loaded) {
          arm(entry, "a turn settled");
          return;
        }
        invalidate(entry, "a turn settled");
        const token = entry.token;
        track(
          entry,
          ensureLoaded(entry).then(() => {
            // A start, settle or setting change since this settle has taken over.
            if (disposed || !isTokenCurrent(entry.token, token)) return;
            change(entry, () => arm(entry, "a turn settled"));
          }),
        );
      });
    },

    getState(conversationId) {
      checkConversationId(conversationId);
      const entry = entryOf(conversationId);
      if (!entry.loaded && !disposed) void ensureLoaded(entry);
      return snapshotOf(entry);
    },

    getContext(conversationId) {
      checkConversationId(conversationId);
      return entries.get(conversationId)?.ctx ?? EMPTY_CONTEXT;
    },

    async setEnabled(conversationId, enabled) {
      checkConversationId(conversationId);
      if (typeof enabled !== "boolean") {
        throw new KvKeepError("INVALID_ARGUMENT", "setEnabled needs a boolean.", { argument: "enabled" });
      }
      checkOpen();
      const entry = entryOf(conversationId);
      change(entry, () => {
        entry.enabled = enabled;
        if (!entry.loaded) entry.overrides.enabled = enabled;
        if (!enabled) invalidate(entry, "warming was disabled");
      });
      await ensureLoaded(entry);
      checkOpen();
      if (enabled) {
        change(entry, () => {
          if (entry.enabled && isIdle(entry)) arm(entry, "warming was enabled");
        });
      }
      await persist(entry);
      return settingsOf(entry);
    },

    async setIntervalMs(conversationId, intervalMs) {
      checkConversationId(conversationId);
      if (typeof intervalMs !== "number" || !Number.isFinite(intervalMs)) {
        throw new KvKeepError("INVALID_ARGUMENT", "setIntervalMs needs a finite number of milliseconds.", {
          argument: "intervalMs",
        });
      }
      checkOpen();
      const entry = entryOf(conversationId);
      const clamped = clampIntervalMs(intervalMs);
      change(entry, () => {
        const changed = entry.intervalMs !== clamped;
        entry.intervalMs = clamped;
        if (!entry.loaded) entry.overrides.intervalMs = clamped;
        if (changed && entry.timer !== null) arm(entry, "the interval changed");
      });
      await ensureLoaded(entry);
      checkOpen();
      await persist(entry);
      return settingsOf(entry);
    },

    async load(conversationId) {
      checkConversationId(conversationId);
      const entry = entryOf(conversationId);
      await ensureLoaded(entry);
      return snapshotOf(entry);
    },

    async ready(conversationId) {
      for (;;) {
        const pending: Promise<void>[] = [];
        if (conversationId === undefined) {
          for (const entry of entries.values()) pending.push(...entry.pending);
        } else {
          const entry = entries.get(conversationId);
          if (entry !== undefined) pending.push(...entry.pending);
        }
        if (pending.length === 0) return;
        await Promise.all(pending);
      }
    },

    dispose() {
      if (disposed) return;
      disposed = true;
      for (const entry of entries.values()) invalidate(entry, "the warmer was disposed");
    },
  };
}
