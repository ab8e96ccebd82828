/** The pure parts of retention: the planner, the index's time guards, the log's line codec. */
import { describe, expect, it } from "vitest";
import { decodeLines, encodeRecord } from "../../src/catalog/log-record.js";
import type { IndexEntry } from "../../src/catalog/entry.js";
import { type Candidate, checkLimit, planSweep, stillVictim } from "../../src/retention/plan.js";
import { RetentionIndex } from "../../src/catalog/retention-index.js";

const entry = (lastUsedMs: number, bytes = 100, kind: "auto" | "named" = "auto"): IndexEntry => ({
  cacheKey: kind === "auto" ? "auto-0123456789abcdef" : "named",
  modelId: "m",
  configHash: "h",
  kind,
  bytes,
  lastUsedMs,
});

describe("planSweep", () => {
  it("idle caches (used before now - maxIdleMs) come first, oldest first; named ones only with evictNamed", () => {
    const entries: Array<[string, IndexEntry]> = [
      ["/r/a", entry(500)],
      ["/r/b", entry(100)],
      ["/r/c", entry(950)],
      ["/r/n", entry(10, 100, "named")],
    ];
    const plan = planSweep(entries, { maxBytes: 1000, maxIdleMs: 300, evictNamed: false }, 1000);
    expect(plan.idle.map((c) => c.cachePath)).toEqual(["/r/b", "/r/a"]);
    expect(plan.evictableBytes).toBe(300);
    expect([...{ [Symbol.iterator]: () => plan.budgetOrder() }].map((c) => c.cachePath)).toEqual(["/r/c"]);

    const withNamed = planSweep(entries, { maxBytes: 1000, maxIdleMs: 300, evictNamed: true }, 1000);
    expect(withNamed.idle.map((c) => c.cachePath)).toEqual(["/r/n", "/r/b", "/r/a"]);
    expect(withNamed.evictableBytes).toBe(400);
  });

  it("budget order is least recently used first, the same order a full sort gives (random input)", () => {
    const entries: Array<[string, IndexEntry]> = Array.from({ length: 2000 }, (_, i) => [
      `/r/${String(i).padStart(4, "0")}`,
      entry(Math.floor(Math.random() * 500)),
    ]);
    const plan = planSweep(entries, { maxBytes: 0, maxIdleMs: 10_000, evictNamed: false }, 1000);
    const order: Candidate[] = [];
    for (let it = plan.budgetOrder(), n = it.next(); !n.done; n = it.next()) order.push(n.value);
    const sorted = [...entries].sort((a, b) => a[1].lastUsedMs - b[1].lastUsedMs || (a[0] < b[0] ? -1 : 1)).map(([p]) => p);
    expect(order.map((c) => c.cachePath)).toEqual(sorted);
    expect(order.every((c) => c.reason === "budget")).toBe(true);
  });
});

describe("stillVictim (the re-check under the cache's lock)", () => {
  const idle: Candidate = { cachePath: "/r/a", entry: entry(100), reason: "idle" };
  const budget: Candidate = { cachePath: "/r/a", entry: entry(100), reason: "budget" };
  it("an idle victim stays one only while the disk, too, says it was last used before the cutoff", () => {
    expect(stillVictim(idle, 100, 200)).toBe(true);
    expect(stillVictim(idle, 150, 200)).toBe(true);
    expect(stillVictim(idle, 200, 200)).toBe(false);
  });
  it("a budget victim stays one only if not used after what the plan knew (1 ms of rounding allowed)", () => {
    expect(stillVictim(budget, 100, 0)).toBe(true);
    expect(stillVictim(budget, 101, 0)).toBe(true);
    expect(stillVictim(budget, 102, 0)).toBe(false);
  });
  it("a cache without a manifest is never trusted, so it may go", () => {
    expect(stillVictim(budget, null, 0)).toBe(true);
  });
});

describe("checkLimit", () => {
  it("accepts finite non-negative numbers and names the argument otherwise", () => {
    expect(checkLimit(0, "maxBytes")).toBe(0);
    expect(checkLimit(1.5, "maxIdleMs")).toBe(1.5);
    for (const bad of [-1, Number.NaN, Number.POSITIVE_INFINITY, "1", null]) {
      expect(() => checkLimit(bad, "maxBytes")).toThrow(expect.objectContaining({ code: "INVALID_ARGUMENT", argument: "maxBytes" }));
    }
  });
});

describe("RetentionIndex", () => {
  it("keeps running totals per kind", () => {
    const index = new RetentionIndex();
    index.put("/r/a", entry(1, 100));
    index.put("/r/n", entry(1, 40, "named"));
    index.put("/r/a", entry(2, 300)); // rewritten
    expect(index.usage()).toEqual({ bytes: 340, count: 2, autoBytes: 300, namedBytes: 40, logicalBytes: 340, chunkCount: 0, chunkBytes: 0 });
    expect(index.evictableBytes(false)).toBe(300);
    expect(index.evictableBytes(true)).toBe(340);
    index.remove("/r/a");
    expect(index.usage()).toEqual({ bytes: 40, count: 1, autoBytes: 0, namedBytes: 40, logicalBytes: 40, chunkCount: 0, chunkBytes: 0 });
  });

  it("changes older than what it knows do not override it (records arrive out of order)", () => {
    const index = new RetentionIndex();
    index.put("/r/a", entry(500, 100));
    index.put("/r/a", entry(400, 999)); // an older write
    index.remove("/r/a", 450); // a removal before the write we know of
    expect(index.get("/r/a")).toMatchObject({ bytes: 100, lastUsedMs: 500 });
    index.use("/r/a", 300);
    expect(index.get("/r/a")?.lastUsedMs).toBe(500);
    index.use("/r/a", 700);
    expect(index.get("/r/a")?.lastUsedMs).toBe(700);
    index.remove("/r/a", 700);
    expect(index.get("/r/a")).toBeUndefined();
  });

  it("a use of an unknown cache adds it when the record says how big it is", () => {
    const index = new RetentionIndex();
    index.use("/r/x", 10);
    expect(index.size).toBe(0);
    index.use("/r/x", 10, entry(0, 77));
    expect(index.get("/r/x")).toMatchObject({ bytes: 77, lastUsedMs: 10 });
  });

  it("entries are replaced, never mutated, so a plan keeps what it was made from", () => {
    const index = new RetentionIndex();
    index.put("/r/a", entry(100));
    const plan = planSweep(index.entries(), { maxBytes: 0, maxIdleMs: 1e9, evictNamed: false }, 200);
    index.use("/r/a", 150);
    const first = plan.budgetOrder().next();
    expect(first.done).toBe(false);
    expect(first.value?.entry.lastUsedMs).toBe(100);
  });

  it("a rebuild replays the changes made while it ran onto the rebuilt map", () => {
    const index = new RetentionIndex();
    index.put("/r/old", entry(1));
    index.beginRebuild();
    index.put("/r/new", entry(50, 10)); // committed during the walk
    index.remove("/r/gone", 60); // removed during the walk, after the walk saw it
    const walked = new Map([
      ["/r/gone", entry(5)],
      ["/r/kept", entry(5, 20)],
    ]);
    index.finishRebuild(walked);
    expect([...index.entries()].map(([p]) => p).sort()).toEqual(["/r/kept", "/r/new"]);
    expect(index.usage()).toMatchObject({ count: 2, autoBytes: 30 });
  });
});

describe("log records", () => {
  it("round-trip as one JSON line each; another writer's torn line and garbage are skipped", () => {
    const put = { op: "put" as const, p: "k/m/h.bin", b: 10, u: 5, w: "w1" };
    const del = { op: "del" as const, p: "k/m/h.bin", u: 6, w: "w2" };
    const text = encodeRecord(put) + '{"op":"pu' + encodeRecord(del) + "not json\n" + encodeRecord({ ...put, op: "use" });
    const { records, skipped } = decodeLines(text);
    expect(records).toEqual([put, del, { ...put, op: "use" }]);
    expect(skipped).toBe(1);
    expect(decodeLines('{"op":"put","p":"k/m/h.bin","u":5,"w":"x"}\n').records).toEqual([]); // a put needs its bytes
  });
});
