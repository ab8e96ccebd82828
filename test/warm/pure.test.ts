import { describe, expect, it } from "vitest";
import {
  type ConversationState,
  clampIntervalMs,
  computeCachePct,
  DEFAULT_INTERVAL_MS,
  isTokenCurrent,
  MAX_INTERVAL_MS,
  MIN_INTERVAL_MS,
  parseSettings,
  serializeSettings,
  settingsKey,
  shouldWarm,
} from "../../src/warm/index.js";

const DEFAULTS = { enabled: true, intervalMs: 240_000 };

function state(overrides: Partial<ConversationState> = {}): ConversationState {
  return { enabled: true, intervalMs: DEFAULT_INTERVAL_MS, active: false, lastPct: null, token: 5, ...overrides };
}

describe("constants", () => {
  it("default interval is 240 000 ms and the minimum 1 000 ms", () => {
    expect(DEFAULT_INTERVAL_MS).toBe(240_000);
    expect(MIN_INTERVAL_MS).toBe(1_000);
  });
});

describe("computeCachePct", () => {
  it("is cacheRead / input as a rounded percentage", () => {
    expect(computeCachePct(1000, 800)).toBe(80);
    expect(computeCachePct(1000, 333)).toBe(33);
    expect(computeCachePct(1000, 125)).toBe(13); // 12.5 rounds up
    expect(computeCachePct(1000, 124)).toBe(12);
    expect(computeCachePct(3, 2)).toBe(67);
  });

  it("clamps to 0..100", () => {
    expect(computeCachePct(1000, 1200)).toBe(100);
    expect(computeCachePct(1000, -100)).toBe(0);
    expect(computeCachePct(1000, 0)).toBe(0);
    expect(computeCachePct(1000, Number.POSITIVE_INFINITY)).toBe(100);
  });

  it("is 0 when input is zero or negative", () => {
    expect(computeCachePct(0, 500)).toBe(0);
    expect(computeCachePct(-1, 500)).toBe(0);
    expect(computeCachePct(Number.NEGATIVE_INFINITY, 500)).toBe(0);
  });

  it("is 0 for NaN inputs, never NaN", () => {
    expect(computeCachePct(Number.NaN, 500)).toBe(0);
    expect(computeCachePct(1000, Number.NaN)).toBe(0);
    expect(computeCachePct(Number.NaN, Number.NaN)).toBe(0);
    expect(computeCachePct(Number.POSITIVE_INFINITY, Number.POSITIVE_INFINITY)).toBe(0);
  });
});

describe("shouldWarm", () => {
  it("is true when enabled, idle and the token is current", () => {
    expect(shouldWarm(state(), 5)).toBe(true);
  });

  it("is false when disabled", () => {
    expect(shouldWarm(state({ enabled: false }), 5)).toBe(false);
  });

  it("is false mid-turn (active)", () => {
    expect(shouldWarm(state({ active: true }), 5)).toBe(false);
  });

  it("is false when the token was superseded", () => {
    expect(shouldWarm(state(), 6)).toBe(false);
    expect(shouldWarm(state(), 4)).toBe(false);
  });
});

describe("isTokenCurrent", () => {
  it("is true only for the same token", () => {
    expect(isTokenCurrent(5, 5)).toBe(true);
    expect(isTokenCurrent(5, 6)).toBe(false);
  });
});

describe("parseSettings / serializeSettings", () => {
  it("round-trips enabled + intervalMs", () => {
    for (const original of [
      { enabled: false, intervalMs: 120_000 },
      { enabled: true, intervalMs: 1_000 },
      { enabled: true, intervalMs: DEFAULT_INTERVAL_MS },
    ]) {
      expect(parseSettings(serializeSettings(original))).toEqual(original);
    }
  });

  it("serialises only the two settings", () => {
    const withExtra = { enabled: false, intervalMs: 5_000, lastPct: 80, token: 3 } as never;
    expect(JSON.parse(serializeSettings(withExtra))).toEqual({ enabled: false, intervalMs: 5_000 });
  });

  it("gives defaults for null", () => {
    expect(parseSettings(null)).toEqual(DEFAULTS);
  });

  it("gives defaults for garbage", () => {
    for (const raw of ["not-json{{{", "", "   ", "{", "undefined", "{'enabled': false}"]) {
      expect(parseSettings(raw)).toEqual(DEFAULTS);
    }
  });

  it("gives defaults for JSON that is not an object", () => {
    for (const raw of ["null", "42", '"text"', "true", "false"]) {
      expect(parseSettings(raw)).toEqual(DEFAULTS);
    }
  });

  it("gives defaults for arrays", () => {
    expect(parseSettings("[]")).toEqual(DEFAULTS);
    expect(parseSettings("[false, 5000]")).toEqual(DEFAULTS);
    expect(parseSettings('[{"enabled":false}]')).toEqual(DEFAULTS);
  });

  it("treats a non-boolean enabled as true", () => {
    expect(parseSettings(JSON.stringify({ enabled: "false", intervalMs: 5_000 }))).toEqual({
      enabled: true,
      intervalMs: 5_000,
    });
    expect(parseSettings(JSON.stringify({ enabled: 0 })).enabled).toBe(true);
    expect(parseSettings(JSON.stringify({ intervalMs: 5_000 })).enabled).toBe(true);
  });

  it("clamps a non-positive interval to the minimum", () => {
    expect(parseSettings(JSON.stringify({ enabled: true, intervalMs: -500 })).intervalMs).toBe(1_000);
    expect(parseSettings(JSON.stringify({ enabled: true, intervalMs: 0 })).intervalMs).toBe(1_000);
  });

  it("rounds an interval and raises it to the minimum", () => {
    expect(parseSettings(JSON.stringify({ enabled: true, intervalMs: 1500.6 })).intervalMs).toBe(1501);
    expect(parseSettings(JSON.stringify({ enabled: true, intervalMs: 1500.4 })).intervalMs).toBe(1500);
    expect(parseSettings(JSON.stringify({ enabled: true, intervalMs: 10 })).intervalMs).toBe(1_000);
  });

  it("lowers an interval beyond what setTimeout supports to the maximum", () => {
    expect(parseSettings(JSON.stringify({ intervalMs: 1e12 })).intervalMs).toBe(MAX_INTERVAL_MS);
  });

  it("uses the default for a NaN or non-numeric interval", () => {
    // JSON has no NaN: JSON.stringify stores it as null.
    expect(parseSettings(JSON.stringify({ enabled: true, intervalMs: Number.NaN })).intervalMs).toBe(240_000);
    expect(parseSettings('{"enabled":true,"intervalMs":"5000"}').intervalMs).toBe(240_000);
    expect(parseSettings('{"enabled":true,"intervalMs":{}}').intervalMs).toBe(240_000);
    expect(parseSettings('{"enabled":false}')).toEqual({ enabled: false, intervalMs: 240_000 });
    expect(parseSettings('{"intervalMs":1e999}').intervalMs).toBe(240_000); // Infinity
  });
});

describe("clampIntervalMs", () => {
  it("is the one clamp: rounds, raises to the minimum, lowers to the maximum", () => {
    expect(clampIntervalMs(-1)).toBe(MIN_INTERVAL_MS);
    expect(clampIntervalMs(0)).toBe(MIN_INTERVAL_MS);
    expect(clampIntervalMs(10)).toBe(MIN_INTERVAL_MS);
    expect(clampIntervalMs(999.5)).toBe(1_000);
    expect(clampIntervalMs(1500.6)).toBe(1501);
    expect(clampIntervalMs(60_000)).toBe(60_000);
    expect(clampIntervalMs(MAX_INTERVAL_MS + 1)).toBe(MAX_INTERVAL_MS);
  });

  it("gives the default for non-finite values", () => {
    expect(clampIntervalMs(Number.NaN)).toBe(DEFAULT_INTERVAL_MS);
    expect(clampIntervalMs(Number.POSITIVE_INFINITY)).toBe(DEFAULT_INTERVAL_MS);
  });
});

describe("settingsKey", () => {
  it("namespaces the conversation id, keeping it intact", () => {
    expect(settingsKey("conv-1")).toBe("settings:conv-1");
    expect(settingsKey("a/b/../c")).toBe("settings:a/b/../c");
    expect(settingsKey("a")).not.toBe(settingsKey("b"));
  });
});
