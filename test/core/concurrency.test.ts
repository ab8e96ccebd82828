/**
 * Many turns at once: 50 turns over 5 keys, some aborted while queued, some cancelled
 * after they began, some committed. Afterwards the disk and memory agree.
 */
import { existsSync, promises as fs } from "node:fs";
import path from "node:path";
import { describe, expect, it } from "vitest";
import { generateConfigHash, isKvKeepError } from "../../src/index.js";
import { KvCacheStoreImpl } from "../../src/facade/kvkeep-store.js";
import { parseManifest } from "../../src/manifest/format.js";
import { countingPrime, listTree, writeState } from "../helpers/fake-engine.js";
import { tempDir } from "../helpers/temp-root.js";

/** Seeded PRNG so a failure reproduces. */
function prng(seed: number): () => number {
  let s = seed >>> 0;
  return () => {
    s = (s + 0x6d2b79f5) >>> 0;
    let t = s;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

describe("concurrent turns", () => {
  it("50 turns over 5 keys with random aborts leave no count without its file, no file without its manifest, no temp and no empty directory", async () => {
    const root = tempDir();
    const store = new KvCacheStoreImpl({ root, onRollback: "clear" });
    const session = store.createSession("model");
    const configHash = generateConfigHash("sys");
    const rand = prng(1234);
    const events: string[] = [];
    let inFlightPerKey = new Map<string, number>();
    let maxInFlightPerKey = 0;

    const runs = Array.from({ length: 50 }, async (_, i) => {
      const key = `key-${i % 5}`;
      const controller = new AbortController();
      const fate = rand();
      if (fate < 0.2) setTimeout(() => controller.abort(), Math.floor(rand() * 5));
      let turn;
      try {
        turn = await session.beginTurn({
          kind: "custom",
          customKey: key,
          configHash,
          primeIfMissing: countingPrime(),
          signal: controller.signal,
        });
      } catch (error) {
        expect(isKvKeepError(error, "ABORTED")).toBe(true);
        events.push("aborted-while-queued");
        return;
      }
      const n = (inFlightPerKey.get(key) ?? 0) + 1;
      inFlightPerKey.set(key, n);
      maxInFlightPerKey = Math.max(maxInFlightPerKey, n);
      try {
        await new Promise((r) => setTimeout(r, Math.floor(rand() * 3)));
        if (fate < 0.45) throw new Error("cancelled mid-turn");
        await writeState(turn.savePath, 200 + Math.floor(rand() * 2000));
        await session.commitTurn(turn, { kind: "static", messageCount: turn.savedCount + 2 });
        events.push("committed");
      } catch {
        events.push("rolled-back");
      } finally {
        inFlightPerKey.set(key, inFlightPerKey.get(key)! - 1);
        await session.rollback(turn);
      }
    });
    await Promise.all(runs);
    await store.close();

    expect(maxInFlightPerKey).toBe(1);
    expect(events.filter((e) => e === "committed").length).toBeGreaterThan(0);
    expect(events.filter((e) => e === "rolled-back").length).toBeGreaterThan(0);

    for (const [cachePath, count] of store.layers.savedCounts) {
      expect(existsSync(cachePath), `count for ${cachePath} has no file`).toBe(true);
      const manifest = parseManifest(await fs.readFile(cachePath.replace(/\.bin$/, ".meta.json"), "utf8"));
      expect(manifest).toHaveProperty("current.messageCount", count);
    }
    const tree = await listTree(root);
    for (const rel of tree) {
      expect(rel.endsWith(".tmp"), `leftover temp ${rel}`).toBe(false);
      if (rel.endsWith(".bin")) {
        expect(tree).toContain(rel.replace(/\.bin$/, ".meta.json"));
        expect(store.layers.savedCounts.has(path.join(root, rel))).toBe(true);
      }
      if (rel.endsWith("/")) {
        const inside = tree.filter((other) => other !== rel && other.startsWith(rel));
        expect(inside.length, `empty directory ${rel}`).toBeGreaterThan(0);
      }
    }
    inFlightPerKey = new Map();
  });
});
