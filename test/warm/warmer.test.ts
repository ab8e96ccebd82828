import { afterEach, beforeEach, describe, expect, it, vi } from "vitest";
import { isKvKeepError } from "../../src/errors.js";
import {
  type CacheWarmer,
  createCacheWarmer,
  type SettingsStorage,
  serializeSettings,
  settingsKey,
  type WarmCallOptions,
  type WarmContext,
  type WarmFn,
  type WarmResult,
} from "../../src/warm/index.js";
import {
  type Deferred,
  deferred,
  type FakeTimers,
  fakeTimers,
  type MemStorage,
  memStorage,
  nextMacrotask,
  type RecordingLogger,
  recordingLogger,
  USAGE,
} from "./helpers.js";

interface WarmCall {
  readonly id: string;
  readonly ctx: WarmContext;
  readonly signal: AbortSignal;
}

interface Harness {
  readonly warmer: CacheWarmer;
  readonly timers: FakeTimers;
  readonly storage: MemStorage;
  readonly logger: RecordingLogger;
  readonly calls: WarmCall[];
  readonly surface: string[];
}

function setup(options: { warm?: (id: string, ctx: WarmContext) => Promise<WarmResult>; storage?: MemStorage } = {}): Harness {
  const timers = fakeTimers();
  const storage = options.storage ?? memStorage();
  const logger = recordingLogger();
  const calls: WarmCall[] = [];
  const surface: string[] = [];
  const inner = options.warm ?? (async () => USAGE);
  const warm: WarmFn = (id, ctx, callOptions: WarmCallOptions) => {
    calls.push({ id, ctx, signal: callOptions.signal });
    return inner(id, ctx);
  };
  const warmer = createCacheWarmer({ warm, storage, logger, timers, onSurfaceChange: (id) => surface.push(id) });
  return { warmer, timers, storage, logger, calls, surface };
}

/** Settle a conversation and wait until its settings are loaded and the timer is armed. */
async function settle(h: Harness, id: string, ctx: WarmContext = {}): Promise<void> {
  h.warmer.onTurnSettled(id, ctx);
  await h.warmer.ready(id);
}

/** Fire every pending timer and wait for the warms (and what they trigger) to finish. */
async function fire(h: Harness): Promise<number> {
  const fired = h.timers.fireAll();
  await h.warmer.ready();
  return fired;
}

const unhandled: unknown[] = [];
const onUnhandled = (reason: unknown): void => {
  unhandled.push(reason);
};

beforeEach(() => {
  unhandled.length = 0;
  process.on("unhandledRejection", onUnhandled);
});

afterEach(() => {
  process.off("unhandledRejection", onUnhandled);
  vi.useRealTimers();
  vi.restoreAllMocks();
});

describe("arming and firing", () => {
  it("arms a timer on settle and warms when it fires", async () => {
    const h = setup();
    await settle(h, "conv-1", { cachePath: "/c/1.bin" });

    expect(h.timers.pending()).toHaveLength(1);
    expect(h.timers.pending()[0]?.ms).toBe(240_000);
    expect(h.warmer.getState("conv-1").armed).toBe(true);
    expect(h.calls).toHaveLength(0);

    expect(await fire(h)).toBe(1);
    expect(h.calls).toHaveLength(1);
    expect(h.calls[0]?.id).toBe("conv-1");
    expect(h.calls[0]?.ctx).toEqual({ cachePath: "/c/1.bin" });
  });

  it("hands warm the context recorded at the last settle", async () => {
    const h = setup();
    await settle(h, "conv-1", { cachePath: "/old.bin" });
    await settle(h, "conv-1", { cachePath: "/new.bin", modelId: "m" });
    expect(h.warmer.getContext("conv-1")).toEqual({ cachePath: "/new.bin", modelId: "m" });
    expect(h.timers.pending()).toHaveLength(1); // the second settle replaced the first arm
    await fire(h);
    expect(h.calls.map((c) => c.ctx)).toEqual([{ cachePath: "/new.bin", modelId: "m" }]);
    expect(h.warmer.getContext("never-seen")).toEqual({});
  });

  it("keeps conversations independent", async () => {
    const h = setup();
    await settle(h, "a");
    await settle(h, "b");
    h.warmer.onTurnStarted("a");
    expect(h.timers.pending()).toHaveLength(1);
    await fire(h);
    expect(h.calls.map((c) => c.id)).toEqual(["b"]);
  });

  it("takes a fresh token per arm: a late callback of a replaced timer does nothing", async () => {
    const h = setup();
    await settle(h, "conv-1");
    const first = h.timers.pending()[0];
    await settle(h, "conv-1");
    expect(h.timers.pending()[0]?.id).not.toBe(first?.id);
    h.timers.fireAnyway(first?.id ?? -1);
    await h.warmer.ready();
    expect(h.calls).toHaveLength(0);
    expect(h.warmer.getState("conv-1").armed).toBe(true);
  });
});

describe("turn started: never warm mid-turn", () => {
  it("cancels the timer on start", async () => {
    const h = setup();
    await settle(h, "conv-1");
    h.warmer.onTurnStarted("conv-1");

    expect(h.timers.pending()).toHaveLength(0);
    expect(h.warmer.getState("conv-1")).toMatchObject({ active: true, armed: false });
    expect(await fire(h)).toBe(0);
    expect(h.calls).toHaveLength(0);
  });

  it("drops a cancelled timer's callback even if the host fires it anyway", async () => {
    const h = setup();
    await settle(h, "conv-1");
    const timer = h.timers.pending()[0];
    h.warmer.onTurnStarted("conv-1");
    h.timers.fireAnyway(timer?.id ?? -1);
    await h.warmer.ready();
    expect(h.calls).toHaveLength(0);
  });

  it("a start during the settle's settings load wins: nothing is armed", async () => {
    const h = setup();
    h.warmer.onTurnSettled("conv-1", {}); // settings not loaded yet: arming waits for them
    h.warmer.onTurnStarted("conv-1");
    await h.warmer.ready();
    expect(h.timers.pending()).toHaveLength(0);
    expect(h.warmer.getState("conv-1").active).toBe(true);
  });

  it("does not arm on start, even for an enabled idle conversation", async () => {
    const h = setup();
    h.warmer.onTurnStarted("conv-1");
    await h.warmer.ready();
    expect(h.timers.setCount).toBe(0);
  });
});

describe("stale warms are dropped", () => {
  it("drops an in-flight result superseded by a new turn: lastPct stays null, no re-arm from it", async () => {
    const pending: Deferred<WarmResult> = deferred();
    const h = setup({ warm: () => pending.promise });
    await settle(h, "conv-1");
    h.timers.fireAll();
    expect(h.calls).toHaveLength(1);
    expect(h.warmer.getState("conv-1")).toMatchObject({ warming: true, armed: false });

    h.warmer.onTurnStarted("conv-1");
    expect(h.calls[0]?.signal.aborted).toBe(true); // the strategy is told to stop
    expect(h.warmer.getState("conv-1").warming).toBe(false);
    h.warmer.onTurnSettled("conv-1", {});
    const armsBefore = h.timers.setCount;
    const settleTimer = h.timers.pending()[0];
    expect(h.timers.pending()).toHaveLength(1);

    pending.resolve(USAGE);
    await h.warmer.ready();

    expect(h.warmer.getState("conv-1").lastPct).toBeNull();
    expect(h.timers.setCount).toBe(armsBefore); // the stale warm did not re-arm
    expect(h.timers.pending()).toEqual([settleTimer]);
    expect(h.logger.at("debug").some((m) => m.includes("stale"))).toBe(true);
  });

  it("drops a stale warm that rejects (aborted) without logging an error or re-arming", async () => {
    // A strategy that rejects when its signal aborts:
    const timers = fakeTimers();
    const logger = recordingLogger();
    const warmer = createCacheWarmer({
      storage: memStorage(),
      timers,
      logger,
      warm: (_id, _ctx, { signal }) =>
        new Promise<WarmResult>((_resolve, reject) => signal.addEventListener("abort", () => reject(signal.reason))),
    });
    warmer.onTurnSettled("conv-1", {});
    await warmer.ready();
    timers.fireAll();
    warmer.onTurnStarted("conv-1");
    await warmer.ready();
    expect(timers.pending()).toHaveLength(0);
    expect(warmer.getState("conv-1").lastPct).toBeNull();
    expect(logger.at("warn")).toEqual([]);
    expect(logger.at("error")).toEqual([]);
    await nextMacrotask();
    expect(unhandled).toEqual([]);
  });

  it("a stale result landing after a newer warm finished changes nothing", async () => {
    const first: Deferred<WarmResult> = deferred();
    let n = 0;
    const h = setup({ warm: () => (n++ === 0 ? first.promise : Promise.resolve({ ...USAGE, cacheReadTokens: 500 })) });
    await settle(h, "conv-1");
    h.timers.fireAll(); // warm #1 in flight
    h.warmer.onTurnSettled("conv-1", {}); // supersedes it and re-arms at once (settings are loaded)
    h.timers.fireAll(); // warm #2 resolves at once: 50%
    // ready() would wait for warm #1 too; drain the microtasks instead (nothing here does real I/O).
    await nextMacrotask();
    expect(h.warmer.getState("conv-1").lastPct).toBe(50);
    first.resolve(USAGE); // late 80% result of warm #1
    await h.warmer.ready();
    expect(h.warmer.getState("conv-1").lastPct).toBe(50);
    expect(h.timers.pending()).toHaveLength(1);
  });
});

describe("disabled", () => {
  it("never warms a disabled conversation", async () => {
    const h = setup();
    await h.warmer.setEnabled("conv-1", false);
    await settle(h, "conv-1");
    expect(h.timers.pending()).toHaveLength(0);
    expect(await fire(h)).toBe(0);
    expect(h.calls).toHaveLength(0);
    expect(h.warmer.getState("conv-1")).toMatchObject({ enabled: false, armed: false });
  });

  it("disabling cancels an armed timer, and its late callback does nothing", async () => {
    const h = setup();
    await settle(h, "conv-1");
    const timer = h.timers.pending()[0];
    await h.warmer.setEnabled("conv-1", false);
    expect(h.timers.pending()).toHaveLength(0);
    h.timers.fireAnyway(timer?.id ?? -1);
    await h.warmer.ready();
    expect(h.calls).toHaveLength(0);
  });

  it("disabling during a warm drops its result and does not re-arm", async () => {
    const pending: Deferred<WarmResult> = deferred();
    const h = setup({ warm: () => pending.promise });
    await settle(h, "conv-1");
    h.timers.fireAll();
    await h.warmer.setEnabled("conv-1", false);
    pending.resolve(USAGE);
    await h.warmer.ready();
    expect(h.warmer.getState("conv-1")).toMatchObject({ lastPct: null, armed: false, warming: false });
  });

  it("enabling arms an idle settled conversation, but not one that never settled or is mid-turn", async () => {
    const h = setup();
    await h.warmer.setEnabled("idle", false);
    await settle(h, "idle");
    await h.warmer.setEnabled("idle", true);
    expect(h.warmer.getState("idle").armed).toBe(true);

    await h.warmer.setEnabled("never-settled", true);
    expect(h.warmer.getState("never-settled").armed).toBe(false);

    await h.warmer.setEnabled("busy", false);
    await settle(h, "busy");
    h.warmer.onTurnStarted("busy");
    await h.warmer.setEnabled("busy", true);
    expect(h.warmer.getState("busy").armed).toBe(false);

    expect(h.timers.pending()).toHaveLength(1);
  });

  it("enabling an already armed conversation does not re-arm it", async () => {
    const h = setup();
    await settle(h, "conv-1");
    const count = h.timers.setCount;
    await h.warmer.setEnabled("conv-1", true);
    expect(h.timers.setCount).toBe(count);
  });
});

describe("lastPct and surface changes", () => {
  it("stores lastPct from the warm's usage and tells the surface", async () => {
    const h = setup();
    await settle(h, "conv-1");
    h.surface.length = 0;
    await fire(h);
    expect(h.warmer.getState("conv-1")).toEqual({
      enabled: true,
      intervalMs: 240_000,
      lastPct: 80,
      active: false,
      armed: true,
      warming: false,
    });
    expect(h.surface).toContain("conv-1");
    expect(new Set(h.surface)).toEqual(new Set(["conv-1"]));
  });

  it("calls onSurfaceChange for enabled, interval, armed and active changes, and only on change", async () => {
    const h = setup();
    await h.warmer.load("conv-1");
    expect(h.surface).toEqual([]); // loading defaults changes nothing shown

    h.warmer.onTurnSettled("conv-1", {}); // armed
    expect(h.surface).toEqual(["conv-1"]);
    await h.warmer.setIntervalMs("conv-1", 5_000); // interval (+ re-arm, one call)
    expect(h.surface).toHaveLength(2);
    await h.warmer.setIntervalMs("conv-1", 5_000); // no change
    expect(h.surface).toHaveLength(2);
    await h.warmer.setEnabled("conv-1", false); // enabled + disarmed, one call
    expect(h.surface).toHaveLength(3);
    h.warmer.onTurnStarted("conv-1"); // active
    expect(h.surface).toHaveLength(4);
    h.warmer.onTurnStarted("conv-1"); // already active: nothing shown changes
    expect(h.surface).toHaveLength(4);
  });

  it("survives an onSurfaceChange that throws", async () => {
    const timers = fakeTimers();
    const logger = recordingLogger();
    const warmer = createCacheWarmer({
      warm: async () => USAGE,
      storage: memStorage(),
      timers,
      logger,
      onSurfaceChange: () => {
        throw new Error("ui gone");
      },
    });
    warmer.onTurnSettled("conv-1", {});
    await warmer.ready();
    timers.fireAll();
    await warmer.ready();
    expect(warmer.getState("conv-1")).toMatchObject({ lastPct: 80, armed: true });
    expect(logger.at("error").some((m) => m.includes("ui gone"))).toBe(true);
  });
});

describe("re-arming after a warm", () => {
  it("re-arms after a successful warm: a second fire warms again", async () => {
    const h = setup();
    await settle(h, "conv-1");
    await fire(h);
    expect(h.timers.pending()).toHaveLength(1);
    await fire(h);
    expect(h.calls).toHaveLength(2);
    expect(h.timers.pending()).toHaveLength(1);
  });

  it("re-arms after an error result, keeping the previous lastPct", async () => {
    let n = 0;
    const h = setup({ warm: async () => (n++ === 0 ? USAGE : { error: "provider busy" }) });
    await settle(h, "conv-1");
    await fire(h);
    await fire(h);
    expect(h.calls).toHaveLength(2);
    expect(h.warmer.getState("conv-1")).toMatchObject({ lastPct: 80, armed: true });
    expect(h.logger.at("debug").some((m) => m.includes("provider busy"))).toBe(true);
    await fire(h);
    expect(h.calls).toHaveLength(3);
  });

  it.each([
    ["throws synchronously", (): Promise<WarmResult> => {
      throw new Error("engine exploded");
    }],
    ["rejects", (): Promise<WarmResult> => Promise.reject(new Error("engine exploded"))],
    ["rejects with a non-Error", (): Promise<WarmResult> => Promise.reject("engine exploded")],
  ])("a warm that %s is an error result: logged, re-armed, no unhandled rejection", async (_name, warm) => {
    const h = setup({ warm });
    await settle(h, "conv-1");
    await fire(h);
    await nextMacrotask(); // let Node report unhandled rejections, if any

    expect(unhandled).toEqual([]);
    expect(h.logger.at("warn").some((m) => m.includes("engine exploded"))).toBe(true);
    expect(h.warmer.getState("conv-1")).toMatchObject({ lastPct: null, armed: true, warming: false });
    await fire(h);
    expect(h.calls).toHaveLength(2);
  });

  it("a warm resolving to neither usage nor { error } is an error result and re-arms", async () => {
    const h = setup({ warm: async () => undefined as unknown as WarmResult });
    await settle(h, "conv-1");
    await fire(h);
    expect(h.warmer.getState("conv-1")).toMatchObject({ lastPct: null, armed: true });
  });

  it("re-arms with the interval current when the warm finishes", async () => {
    const pending: Deferred<WarmResult> = deferred();
    const h = setup({ warm: () => pending.promise });
    await settle(h, "conv-1");
    h.timers.fireAll();
    await h.warmer.setIntervalMs("conv-1", 2_000); // not armed while warming: stays unarmed
    expect(h.timers.pending()).toHaveLength(0);
    pending.resolve(USAGE);
    await h.warmer.ready();
    expect(h.timers.pending().map((t) => t.ms)).toEqual([2_000]);
  });
});

describe("interval changes", () => {
  it("re-arms an armed timer with the new interval", async () => {
    const h = setup();
    await settle(h, "conv-1");
    const old = h.timers.pending()[0];
    const settings = await h.warmer.setIntervalMs("conv-1", 5_000);
    expect(settings).toEqual({ enabled: true, intervalMs: 5_000 });
    const now = h.timers.pending();
    expect(now).toHaveLength(1);
    expect(now[0]?.ms).toBe(5_000);
    expect(now[0]?.id).not.toBe(old?.id);
    h.timers.fireAnyway(old?.id ?? -1); // the replaced timer is stale
    await h.warmer.ready();
    expect(h.calls).toHaveLength(0);
    await fire(h);
    expect(h.calls).toHaveLength(1);
    expect(h.timers.pending()[0]?.ms).toBe(5_000); // and keeps it after the warm
  });

  it("leaves an unarmed conversation unarmed", async () => {
    const h = setup();
    await h.warmer.setIntervalMs("never-settled", 5_000);
    await settle(h, "mid-turn");
    h.warmer.onTurnStarted("mid-turn");
    await h.warmer.setIntervalMs("mid-turn", 5_000);
    expect(h.timers.pending()).toHaveLength(0);
    expect(h.warmer.getState("mid-turn")).toMatchObject({ intervalMs: 5_000, armed: false });

    h.warmer.onTurnSettled("mid-turn", {});
    expect(h.timers.pending().map((t) => t.ms)).toEqual([5_000]);
  });

  it("clamps through the same rule as parseSettings and rejects non-numbers", async () => {
    const h = setup();
    expect((await h.warmer.setIntervalMs("c", 10)).intervalMs).toBe(1_000);
    expect((await h.warmer.setIntervalMs("c", -5)).intervalMs).toBe(1_000);
    expect((await h.warmer.setIntervalMs("c", 1500.6)).intervalMs).toBe(1501);
    for (const bad of [Number.NaN, Number.POSITIVE_INFINITY, "5000" as unknown as number]) {
      const error = await h.warmer.setIntervalMs("c", bad).catch((e: unknown) => e);
      expect(isKvKeepError(error, "INVALID_ARGUMENT")).toBe(true);
    }
    expect(h.warmer.getState("c").intervalMs).toBe(1501);
  });
});

describe("dispose", () => {
  it("clears every timer", async () => {
    const h = setup();
    await settle(h, "a");
    await settle(h, "b");
    await settle(h, "c");
    expect(h.timers.pending()).toHaveLength(3);
    h.warmer.dispose();
    expect(h.timers.pending()).toHaveLength(0);
    expect(h.warmer.getState("a").armed).toBe(false);
  });

  it("makes a late-resolving warm do nothing: no lastPct, no re-arm, no surface change", async () => {
    const pending: Deferred<WarmResult> = deferred();
    const h = setup({ warm: () => pending.promise });
    await settle(h, "conv-1");
    h.timers.fireAll();
    h.warmer.dispose();
    expect(h.calls[0]?.signal.aborted).toBe(true);
    const armed = h.timers.setCount;
    h.surface.length = 0;
    pending.resolve(USAGE);
    await h.warmer.ready();
    expect(h.warmer.getState("conv-1").lastPct).toBeNull();
    expect(h.timers.setCount).toBe(armed);
    expect(h.surface).toEqual([]);
  });

  it("turns later events into no-ops and rejects settings changes", async () => {
    const h = setup();
    await settle(h, "conv-1");
    const timer = h.timers.pending()[0];
    h.warmer.dispose();
    h.warmer.dispose(); // idempotent
    h.timers.fireAnyway(timer?.id ?? -1);
    h.warmer.onTurnStarted("conv-1");
    h.warmer.onTurnSettled("conv-1", {});
    await h.warmer.ready();
    expect(h.timers.pending()).toHaveLength(0);
    expect(h.calls).toHaveLength(0);
    const error = await h.warmer.setEnabled("conv-1", false).catch((e: unknown) => e);
    expect(isKvKeepError(error, "STORE_CLOSED")).toBe(true);
    expect(h.storage.writes).toEqual([]);
  });

  it("a settle whose settings load finishes after dispose does not arm", async () => {
    const h = setup();
    h.warmer.onTurnSettled("conv-1", {});
    h.warmer.dispose();
    await h.warmer.ready();
    expect(h.timers.setCount).toBe(0);
  });
});

describe("settings persistence", () => {
  it("persists settings, and warming persists nothing else", async () => {
    const h = setup();
    await settle(h, "conv-1");
    await fire(h);
    await fire(h);
    expect(h.storage.writes).toEqual([]); // warming never writes conversation state

    await h.warmer.setEnabled("conv-1", false);
    await h.warmer.setIntervalMs("conv-1", 60_000);
    expect([...h.storage.map.keys()]).toEqual([settingsKey("conv-1")]);
    expect(JSON.parse(h.storage.map.get(settingsKey("conv-1")) ?? "null")).toEqual({
      enabled: false,
      intervalMs: 60_000,
    });
  });

  it("a new warmer on the same storage keeps a disabled conversation disabled (restart)", async () => {
    const storage = memStorage();
    const before = setup({ storage });
    await before.warmer.setEnabled("conv-1", false);
    before.warmer.dispose();

    const after = setup({ storage });
    await settle(after, "conv-1");
    expect(after.timers.pending()).toHaveLength(0);
    expect(await fire(after)).toBe(0);
    expect(after.calls).toHaveLength(0);
    expect(after.warmer.getState("conv-1").enabled).toBe(false);
  });

  it("a new warmer on the same storage uses the saved interval for its first arm (restart)", async () => {
    const storage = memStorage();
    const before = setup({ storage });
    await before.warmer.setIntervalMs("conv-1", 5_000);
    before.warmer.dispose();

    const after = setup({ storage });
    await settle(after, "conv-1");
    expect(after.timers.pending().map((t) => t.ms)).toEqual([5_000]);
  });

  it("loads saved settings before arming even when the settle is the first thing the warmer sees", async () => {
    const storage = memStorage({ [settingsKey("conv-1")]: serializeSettings({ enabled: true, intervalMs: 7_000 }) });
    const h = setup({ storage });
    h.warmer.onTurnSettled("conv-1", {});
    expect(h.timers.setCount).toBe(0); // not armed with defaults meanwhile
    await h.warmer.ready("conv-1");
    expect(h.timers.pending().map((t) => t.ms)).toEqual([7_000]);
  });

  it("a setting changed while the saved ones load wins over them and keeps the other saved setting", async () => {
    const storage = memStorage({ [settingsKey("conv-1")]: serializeSettings({ enabled: false, intervalMs: 7_000 }) });
    const h = setup({ storage });
    const settled = h.warmer.setEnabled("conv-1", true);
    h.warmer.onTurnSettled("conv-1", {});
    expect(await settled).toEqual({ enabled: true, intervalMs: 7_000 });
    await h.warmer.ready();
    expect(h.timers.pending().map((t) => t.ms)).toEqual([7_000]);
    expect(JSON.parse(storage.map.get(settingsKey("conv-1")) ?? "null")).toEqual({ enabled: true, intervalMs: 7_000 });
  });

  it("concurrent setting changes all persist", async () => {
    const h = setup();
    await Promise.all([h.warmer.setEnabled("conv-1", false), h.warmer.setIntervalMs("conv-1", 9_000)]);
    expect(JSON.parse(h.storage.map.get(settingsKey("conv-1")) ?? "null")).toEqual({ enabled: false, intervalMs: 9_000 });
  });

  it("getState loads saved settings in the background and reports the change", async () => {
    const storage = memStorage({ [settingsKey("conv-1")]: serializeSettings({ enabled: false, intervalMs: 7_000 }) });
    const h = setup({ storage });
    expect(h.warmer.getState("conv-1").enabled).toBe(true); // defaults until loaded
    await h.warmer.ready();
    expect(h.warmer.getState("conv-1")).toMatchObject({ enabled: false, intervalMs: 7_000 });
    expect(h.surface).toEqual(["conv-1"]);
    expect(await h.warmer.load("conv-1")).toMatchObject({ enabled: false, intervalMs: 7_000 });
  });

  it("treats malformed saved settings as defaults", async () => {
    const storage = memStorage({ [settingsKey("conv-1")]: "{not json" });
    const h = setup({ storage });
    await settle(h, "conv-1");
    expect(h.timers.pending().map((t) => t.ms)).toEqual([240_000]);
  });

  it("an unreadable storage means defaults (logged) and a retry on the next load", async () => {
    const map = new Map<string, string>([[settingsKey("conv-1"), serializeSettings({ enabled: true, intervalMs: 3_000 })]]);
    let failures = 1;
    const storage: SettingsStorage = {
      get: async (key) => {
        if (failures-- > 0) throw new Error("disk on fire");
        return map.get(key) ?? null;
      },
      set: async (key, value) => void map.set(key, value),
      delete: async (key) => void map.delete(key),
      has: async (key) => map.has(key),
      keys: async () => [...map.keys()],
    };
    const timers = fakeTimers();
    const logger = recordingLogger();
    const warmer = createCacheWarmer({ warm: async () => USAGE, storage, timers, logger });
    warmer.onTurnSettled("conv-1", {});
    await warmer.ready();
    expect(timers.pending().map((t) => t.ms)).toEqual([240_000]);
    expect(logger.at("warn").some((m) => m.includes("disk on fire"))).toBe(true);
    expect(await warmer.load("conv-1")).toMatchObject({ intervalMs: 3_000 });
    await nextMacrotask();
    expect(unhandled).toEqual([]);
  });

  it("a failed settings write rejects setEnabled but keeps the in-memory change", async () => {
    const storage: SettingsStorage = {
      ...memStorage(),
      set: async () => {
        throw new Error("read-only file system");
      },
    };
    const timers = fakeTimers();
    const logger = recordingLogger();
    const warmer = createCacheWarmer({ warm: async () => USAGE, storage, timers, logger });
    await expect(warmer.setEnabled("conv-1", false)).rejects.toThrow("read-only file system");
    expect(warmer.getState("conv-1").enabled).toBe(false);
    expect(logger.at("warn").some((m) => m.includes("read-only"))).toBe(true);
  });
});

describe("argument checks", () => {
  it("rejects bad input with INVALID_ARGUMENT", async () => {
    const h = setup();
    const codeOf = (fn: () => unknown): unknown => {
      try {
        fn();
      } catch (error) {
        return isKvKeepError(error) ? error.code : error;
      }
      return undefined;
    };
    expect(codeOf(() => h.warmer.onTurnSettled("", {}))).toBe("INVALID_ARGUMENT");
    expect(codeOf(() => h.warmer.onTurnStarted(42 as unknown as string))).toBe("INVALID_ARGUMENT");
    expect(codeOf(() => h.warmer.onTurnSettled("c", "ctx" as unknown as WarmContext))).toBe("INVALID_ARGUMENT");
    const error = await h.warmer.setEnabled("c", "no" as unknown as boolean).catch((e: unknown) => e);
    expect(isKvKeepError(error, "INVALID_ARGUMENT")).toBe(true);
    expect(codeOf(() => createCacheWarmer({ storage: memStorage() } as never))).toBe("INVALID_ARGUMENT");
  });
});

describe("default timers", () => {
  it("uses setTimeout with the interval when no timers are injected", async () => {
    vi.useFakeTimers({ toFake: ["setTimeout", "clearTimeout"] });
    let warms = 0;
    const warmer = createCacheWarmer({
      warm: async () => {
        warms++;
        return USAGE;
      },
      storage: memStorage(),
    });
    warmer.onTurnSettled("conv-1", {});
    await warmer.ready();
    await vi.advanceTimersByTimeAsync(239_999);
    expect(warms).toBe(0);
    await vi.advanceTimersByTimeAsync(1);
    await warmer.ready();
    expect(warms).toBe(1);
    expect(warmer.getState("conv-1")).toMatchObject({ lastPct: 80, armed: true });
    await vi.advanceTimersByTimeAsync(240_000);
    await warmer.ready();
    expect(warms).toBe(2);
    warmer.dispose();
    expect(vi.getTimerCount()).toBe(0);
  });

  it("unrefs its timers so a warmer never keeps the process alive", async () => {
    const spy = vi.spyOn(globalThis, "setTimeout");
    const warmer = createCacheWarmer({ warm: async () => USAGE, storage: memStorage() });
    warmer.onTurnSettled("conv-1", {});
    await warmer.ready();
    const handle = spy.mock.results.find((r) => r.type === "return")?.value as NodeJS.Timeout | undefined;
    expect(spy).toHaveBeenCalledWith(expect.any(Function), 240_000);
    expect(handle?.hasRef()).toBe(false);
    warmer.dispose();
  });
});
