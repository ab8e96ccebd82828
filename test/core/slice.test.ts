import { describe, expect, it } from "vitest";
import { decideCachedHistorySlice } from "../../src/index.js";

const history = [
  { role: "system", content: "sys" },
  { role: "user", content: "hi" },
  { role: "assistant", content: "hello" },
  { role: "user", content: "again" },
];
const withoutSystem = history.slice(1);

describe("decideCachedHistorySlice", () => {
  it("sends the tail after the saved messages when the count fits inside the history", () => {
    expect(decideCachedHistorySlice(2, true, history)).toEqual({ messages: history.slice(2), clearStaleCount: false });
    expect(decideCachedHistorySlice(3, true, history)).toEqual({ messages: history.slice(3), clearStaleCount: false });
  });

  it("sends the whole history without system messages when nothing is saved yet, without flagging", () => {
    expect(decideCachedHistorySlice(0, true, history)).toEqual({ messages: withoutSystem, clearStaleCount: false });
  });

  it("never sends an empty payload: a count at or past the end falls back and flags the stale count", () => {
    expect(decideCachedHistorySlice(4, true, history)).toEqual({ messages: withoutSystem, clearStaleCount: true });
    expect(decideCachedHistorySlice(10, true, history)).toEqual({ messages: withoutSystem, clearStaleCount: true });
  });

  it("without a cache, strips system messages whatever the count and flags nothing", () => {
    expect(decideCachedHistorySlice(2, false, history)).toEqual({ messages: withoutSystem, clearStaleCount: false });
  });

  it("returns nothing for an empty history, without flagging", () => {
    expect(decideCachedHistorySlice(2, true, [])).toEqual({ messages: [], clearStaleCount: false });
  });

  it("does not modify the history it is given", () => {
    const copy = structuredClone(history);
    decideCachedHistorySlice(0, true, history);
    expect(history).toEqual(copy);
  });
});
