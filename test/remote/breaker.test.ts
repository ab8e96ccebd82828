/** The remote tier's circuit breaker and record checks (pure logic, a fake clock). */
import { describe, expect, it } from "vitest";
import { CircuitBreaker } from "../../src/remote/breaker.js";
import { parseRecord, RECORD_FORMAT, type RemoteRecord, serializeRecord } from "../../src/remote/record.js";

function breaker() {
  const clock = { now: 0 };
  const b = new CircuitBreaker({ failuresToOpen: 2, baseCooldownMs: 100, maxCooldownMs: 350, now: () => clock.now });
  return { b, clock };
}

describe("circuit breaker", () => {
  it("runs operations until failures in a row reach the threshold; a success in between resets the count", () => {
    const { b } = breaker();
    expect(b.admit()).toBe("run");
    expect(b.failed()).toBe(false);
    b.succeeded();
    expect(b.failed()).toBe(false);
    expect(b.admit()).toBe("run");
    expect(b.failed()).toBe(true); // the transition is reported once: one warning per outage
    expect(b.failed()).toBe(false);
    expect(b.state).toBe("open");
  });

  it("skips while cooling down, then lets exactly one probe through; a failed probe doubles the cooldown up to its cap", () => {
    const { b, clock } = breaker();
    b.failed();
    b.failed();
    expect(b.admit()).toBe("skip");
    clock.now = 100;
    expect(b.admit()).toBe("probe");
    expect(b.admit()).toBe("skip"); // one probe at a time
    expect(b.probeDone(false)).toBe(false);
    clock.now = 299;
    expect(b.admit()).toBe("skip");
    clock.now = 300;
    expect(b.admit()).toBe("probe");
    b.probeDone(false); // cooldown 400 → capped at 350
    clock.now = 649;
    expect(b.admit()).toBe("skip");
    clock.now = 650;
    expect(b.admit()).toBe("probe");
    expect(b.probeDone(true)).toBe(true);
    expect(b.state).toBe("closed");
    expect(b.admit()).toBe("run");
  });

  it("starts a new outage from the base cooldown after recovering", () => {
    const { b, clock } = breaker();
    b.failed();
    b.failed();
    clock.now = 100;
    b.admit();
    b.probeDone(false);
    clock.now = 300;
    b.admit();
    b.probeDone(true);
    expect(b.failed()).toBe(false);
    expect(b.failed()).toBe(true);
    clock.now = 399;
    expect(b.admit()).toBe("skip");
    clock.now = 400;
    expect(b.admit()).toBe("probe");
  });
});

describe("remote records", () => {
  const id = { modelId: "tiny", fingerprint: "fp", configHash: "cfg", cacheKey: "chat-1" };
  const record: RemoteRecord = {
    format: RECORD_FORMAT,
    id,
    size: 2500,
    xxh64: "0123456789abcdef",
    messageCount: 4,
    tokenCount: 77,
    chain: ["0000000000000001", "0000000000000002"],
    committedAt: 1_700_000_000_000,
    generation: 1_796_000_000_000_123,
    chunkBytes: 1000,
    chunks: 3,
    dataGeneration: 1_796_000_000_000_001,
  };

  it("reads back what was written, generations exact", () => {
    expect(parseRecord(serializeRecord(record), id)).toEqual(record);
  });

  it.each([
    ["another cache's record", { cacheKey: "chat-2" }],
    ["an unsafe cache key", { cacheKey: "../x" }],
    ["a chunk count that does not fit the size", { chunks: 2 }],
    ["an empty state", { size: 0, chunks: 0 }],
    ["a data generation after its own", { dataGeneration: 1_796_000_000_000_124 }],
    ["no generation", { generation: 0 }],
    ["a bad checksum", { xxh64: "xyz" }],
    ["another format", { format: 2 }],
    ["a fractional size", { size: 2500.5 }],
  ])("refuses %s", (_what, change) => {
    const { id: _id, ...flat } = record;
    const text = JSON.stringify({ ...flat, ...id, ...change });
    expect(parseRecord(text, id)).toHaveProperty("error");
  });

  it.each([
    ["a path in it", ["0000000000000001", "/etc/passwd"]],
    ["more keys than its conversation has messages", ["0000000000000001", "0000000000000002", "0000000000000003", "0000000000000004", "0000000000000005"]],
    ["not a list", "0000000000000001"],
  ])("keeps a state whose chain has %s, without the chain: it only stops being a prefix source (as a manifest's)", (_what, chain) => {
    const { id: _id, ...flat } = record;
    const parsed = parseRecord(JSON.stringify({ ...flat, ...id, chain }), id);
    expect(parsed).toEqual({ ...record, chain: null });
  });

  it("refuses text that is not a record object", () => {
    for (const text of ["", "null", "[]", "42", "{", '"x"']) expect(parseRecord(text)).toHaveProperty("error");
  });
});
