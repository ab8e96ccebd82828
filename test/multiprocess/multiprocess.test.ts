/**
 * Cross-process guarantees with real processes sharing one root (native addon locks):
 * turns on one cache serialise across processes, no update is lost, racing auto commits
 * never mix two writers' states, and a lock dies with its holder.
 * Skipped, with the reason printed, under KVKEEP_NO_NATIVE=1: the JS fallback documents
 * that it lacks exactly these guarantees.
 */
import { promises as fs } from "node:fs";
import { beforeAll, describe, expect, it } from "vitest";
import { generateConfigHash, openKvCacheStore } from "../../src/index.js";
import { parseManifest } from "../../src/manifest/format.js";
import { bundleFixture, runChild } from "../helpers/child.js";
import { tempDir } from "../helpers/temp-root.js";

const noNative = process.env.KVKEEP_NO_NATIVE === "1";
if (noNative) console.warn("SKIPPED multi-process tests: KVKEEP_NO_NATIVE=1 selects the JS fallback, which has no cross-process locks");
const configHash = generateConfigHash("multi-process");
let worker: string;

beforeAll(async () => {
  worker = await bundleFixture("test/multiprocess/fixtures/turn-worker.ts");
});

async function headerOf(file: string): Promise<{ key: string; writer: string; count: number }> {
  const text = (await fs.readFile(file)).subarray(0, 200).toString("utf8");
  return JSON.parse(text.slice(0, text.indexOf("\n")));
}

describe.skipIf(noNative)("several processes on one root", () => {
  it("4 processes × 200 turns on 3 shared keys: turns serialise, no update is lost, every cache is valid", async () => {
    const root = tempDir();
    const runs = ["w0", "w1", "w2", "w3"].map((name) => runChild(worker, [root, "turns", name, "200"]));
    const codes = await Promise.all(runs.map((r) => r.exited));
    runs.forEach((r, i) => expect(codes[i], r.stderr()).toBe(0));
    expect(runs[0]!.stdout()).toContain("done local-build");

    const store = openKvCacheStore({ root, verify: "checksum", onRollback: "keep-committed" });
    const session = store.createSession("mp-model");
    let total = 0;
    for (const key of ["k0", "k1", "k2"]) {
      const turn = await session.beginTurn({ kind: "custom", customKey: key, configHash, primeIfMissing: async () => {} });
      expect(turn.primed).toBe(false);
      const header = await headerOf(turn.cachePath);
      expect(header.key).toBe(key);
      expect(turn.savedCount).toBe(header.count);
      const manifest = parseManifest(await fs.readFile(turn.cachePath.replace(/\.bin$/, ".meta.json"), "utf8"));
      expect(manifest).toMatchObject({ current: { messageCount: header.count }, pending: null });
      total += header.count;
      await session.rollback(turn);
    }
    // Each of the 800 turns added exactly one to its key's count: a lost update would show here.
    expect(total).toBe(800);
    const leftovers = (await fs.readdir(root, { recursive: true })).filter((f) => String(f).endsWith(".tmp"));
    expect(leftovers).toEqual([]);
  }, 300_000);

  it("auto commits racing onto the same targets keep one writer's state whole, never a mix", async () => {
    const root = tempDir();
    const runs = ["a", "b"].map((name) => runChild(worker, [root, "auto-race", name, "60"]));
    const codes = await Promise.all(runs.map((r) => r.exited));
    runs.forEach((r, i) => expect(codes[i], r.stderr()).toBe(0));
    const store = openKvCacheStore({ root, verify: "checksum", onRollback: "keep-committed" });
    const session = store.createSession("mp-model");
    const winners = new Set<string>();
    for (let i = 0; i < 60; i++) {
      const history = [
        { role: "user", content: `question ${i}` },
        { role: "assistant", content: `answer ${i}` },
        { role: "user", content: "next" },
      ];
      const turn = await session.beginTurn({ kind: "auto", configHash, history, primeIfMissing: async () => {} });
      expect(turn.primed, `target ${i} lost`).toBe(false);
      const header = await headerOf(turn.cachePath);
      expect(header.key).toBe(`answer-${i}`);
      expect(turn.savedCount).toBe(2);
      winners.add(header.writer);
      await session.rollback(turn);
    }
    expect([...winners].every((w) => w === "a" || w === "b")).toBe(true);
  }, 120_000);

  it("a holder killed with SIGKILL while holding a cache's lock does not block the next turn", async () => {
    const root = tempDir();
    const holder = runChild(worker, [root, "hold", "contended"]);
    await holder.waitForLine((l) => l === "holding");
    const store = openKvCacheStore({ root });
    const session = store.createSession("mp-model");
    // While the holder lives, the turn waits (and can be abandoned).
    const waiting = new AbortController();
    const blocked = session.beginTurn({ kind: "custom", customKey: "contended", configHash, primeIfMissing: async () => {}, signal: waiting.signal });
    await new Promise((r) => setTimeout(r, 150));
    waiting.abort();
    await expect(blocked).rejects.toMatchObject({ code: "ABORTED" });

    expect(holder.child.exitCode).toBeNull(); // still alive and holding until now
    holder.child.kill("SIGKILL");
    expect(await holder.exited).toBe("SIGKILL");
    const started = Date.now();
    const turn = await session.beginTurn({ kind: "custom", customKey: "contended", configHash, primeIfMissing: async () => {} });
    console.log(`lock of a SIGKILLed holder taken ${Date.now() - started} ms after its death`);
    expect(turn.primed).toBe(false); // the holder's primed cache was committed before it held the turn
    await session.rollback(turn);
  }, 60_000);
});
