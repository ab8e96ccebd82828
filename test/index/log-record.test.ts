import { describe, expect, it } from "vitest";
import { decodeLines, encodeRecord, prefixOfRecord } from "../../src/catalog/log-record.js";

const key = "0123456789abcdef";

describe("prefix facts in the shared index log", () => {
  it("round-trip on a put record", () => {
    const line = encodeRecord({ op: "put", p: "k/m/h.bin", b: 10, u: 1, w: "w", f: "fp", c: [key, key], m: 3, t: 120 });
    const { records, skipped } = decodeLines(line);
    expect(skipped).toBe(0);
    expect(prefixOfRecord(records[0]!)).toEqual({ fingerprint: "fp", chain: [key, key], messageCount: 3, tokenCount: 120 });
  });

  it("a put without them carries none, and is still a put", () => {
    const { records } = decodeLines(encodeRecord({ op: "put", p: "k/m/h.bin", b: 10, u: 1, w: "w" }));
    expect(records).toHaveLength(1);
    expect(prefixOfRecord(records[0]!)).toBeNull();
  });

  it("a record with malformed prefix facts is skipped whole (a log is hostile input)", () => {
    const bad = [
      { c: ["not-hex"], m: 1, f: null, t: null },
      { c: [key, key], m: 1, f: null, t: null }, // more keys than messages
      { c: "x", m: 1, f: null, t: null },
      { c: [key], m: -1, f: null, t: null },
      { c: [key], m: 1, f: 5, t: null },
      { c: [key], m: 1, f: null, t: "many" },
      { c: Array.from({ length: 5000 }, () => key), m: 5000, f: null, t: null },
    ];
    const text = bad.map((extra) => JSON.stringify({ op: "put", p: "k/m/h.bin", b: 1, u: 1, w: "w", ...extra }) + "\n").join("");
    expect(decodeLines(text)).toEqual({ records: [], skipped: bad.length });
  });
});
