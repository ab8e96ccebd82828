/**
 * Library edges from the hardening review (issue 11, item 7): a closed store deletes
 * nothing, and an auto-mode turn needs a history.
 */
import { existsSync } from "node:fs";
import { describe, expect, it } from "vitest";
import { generateConfigHash, openKvCacheStore } from "../../src/index.js";
import { countingPrime, customTurn } from "../helpers/fake-engine.js";
import { tempDir } from "../helpers/temp-root.js";

const configHash = generateConfigHash("sys");

describe("a closed store", () => {
  it("refuses delete() with STORE_CLOSED and removes nothing", async () => {
    const store = openKvCacheStore({ root: tempDir() });
    const turn = await customTurn(store.createSession("m"), "c", configHash, 2);
    await store.close();
    await expect(store.delete({ kvCacheKey: "c" })).rejects.toMatchObject({ code: "STORE_CLOSED" });
    await expect(store.delete({ all: true })).rejects.toMatchObject({ code: "STORE_CLOSED" });
    expect(existsSync(turn.cachePath)).toBe(true);
    // Bad arguments are still reported as such.
    await expect(store.delete({ kvCacheKey: ".." })).rejects.toMatchObject({ code: "KEY_DOT_SEGMENT" });
  });
});

describe("auto mode", () => {
  it("an empty history is refused with INVALID_ARGUMENT (argument history) before anything is touched", async () => {
    const root = tempDir();
    const store = openKvCacheStore({ root });
    const prime = countingPrime();
    await expect(store.createSession("m").beginTurn({ kind: "auto", configHash, history: [], primeIfMissing: prime })).rejects.toMatchObject({
      code: "INVALID_ARGUMENT",
      argument: "history",
    });
    expect(prime.calls).toEqual([]);
    await store.close();
  });
});
