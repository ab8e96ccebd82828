/** store.useCache: using a committed cache outside a turn, under its lock, only when trusted. */
import { existsSync } from "node:fs";
import path from "node:path";
import { describe, expect, it } from "vitest";
import { generateConfigHash, openKvCacheStore, type TurnHandle } from "../../src/index.js";
import { countingPrime, customTurn } from "../helpers/fake-engine.js";
import { tempDir } from "../helpers/temp-root.js";

const configHash = generateConfigHash("sys");

describe("store.useCache", () => {
  it("hands a trusted cache to `use` with its count, tokens and size, holding its lock meanwhile", async () => {
    const store = openKvCacheStore({ root: tempDir() });
    const session = store.createSession("m", { fingerprint: "fp" });
    const turn = await customTurn(session, "c", configHash, 4);
    let beganDuringUse = false;
    let begin: Promise<TurnHandle> | undefined;
    const info = await store.useCache(turn.cachePath, { fingerprint: "fp" }, async (cache) => {
      begin = session.beginTurn({ kind: "custom", customKey: "c", configHash, primeIfMissing: countingPrime() }).then((t) => {
        beganDuringUse = true;
        return t;
      });
      await new Promise((r) => setTimeout(r, 30));
      expect(beganDuringUse).toBe(false);
      return cache;
    });
    expect(info).toMatchObject({ cachePath: turn.cachePath, messageCount: 4, tokenCount: null });
    expect(info!.bytes).toBeGreaterThan(0);
    // The waiting turn gets the cache once `use` is done; it is ended before the test (and
    // its temp root) goes, so nothing of it runs after the test.
    const waited = await begin!;
    expect(waited.primed).toBe(false);
    await session.rollback(waited);
    await store.close();
  });

  it("resolves null without waiting when a turn holds the cache", async () => {
    const store = openKvCacheStore({ root: tempDir() });
    const session = store.createSession("m");
    const turn = await session.beginTurn({ kind: "custom", customKey: "c", configHash, primeIfMissing: countingPrime() });
    let used = false;
    expect(await store.useCache(turn.cachePath, {}, async () => (used = true))).toBeNull();
    expect(used).toBe(false);
    await session.rollback(turn);
  });

  it("never hands out a cache of another fingerprint: it is removed and null returned", async () => {
    const store = openKvCacheStore({ root: tempDir() });
    const turn = await customTurn(store.createSession("m", { fingerprint: "fp-a" }), "c", configHash, 2);
    let used = false;
    expect(await store.useCache(turn.cachePath, { fingerprint: "fp-b" }, async () => (used = true))).toBeNull();
    expect(used).toBe(false);
    expect(existsSync(turn.cachePath)).toBe(false);
  });

  it("resolves null for a missing cache and rejects a path outside the root", async () => {
    const root = tempDir();
    const store = openKvCacheStore({ root });
    const missing = store.createSession("m").customCachePath("none", configHash);
    expect(await store.useCache(missing, {}, async () => 1)).toBeNull();
    expect(existsSync(path.join(root, "none"))).toBe(false);
    await expect(store.useCache(path.join(root, "..", "x.bin"), {}, async () => 1)).rejects.toMatchObject({
      code: "INVALID_ARGUMENT",
      argument: "cachePath",
    });
  });
});
