/**
 * A last use in the future (issue 11, item 7): a manifest whose mtime lies ahead — a skewed
 * clock, a restored backup, a hand-touched file — or another process's record stamped
 * ahead, is believed only up to now. It no longer exempts a cache from idle eviction, even
 * with maxIdleMs: 0.
 */
import { promises as fs } from "node:fs";
import { describe, expect, it } from "vitest";
import { manifestPathOf } from "../../src/layout/paths.js";
import { clampUse } from "../../src/catalog/entry.js";
import { stillVictim } from "../../src/retention/plan.js";
import { tempDir } from "../helpers/temp-root.js";
import { commitAuto, MODEL, openStore, sleep } from "./helpers.js";

const YEAR_2100_S = 4_102_444_800;

describe("a last use in the future", () => {
  it("a cache whose manifest mtime is in the future is evicted by an idle sweep (maxIdleMs: 0) of a reopened store", async () => {
    const root = tempDir();
    const first = openStore(root);
    const ahead = await commitAuto(first.createSession(MODEL), "ahead");
    const normal = await commitAuto(first.createSession(MODEL), "normal");
    await first.close();
    await fs.utimes(manifestPathOf(ahead), YEAR_2100_S, YEAR_2100_S);
    const store = openStore(root);
    await store.ready;
    await sleep(5);
    const { evicted } = await store.sweep({ maxIdleMs: 0 });
    expect(evicted.map((e) => e.reason).sort()).toEqual(["idle", "idle"]);
    expect((await store.usage()).count).toBe(0);
    expect([ahead, normal].length).toBe(2);
    await store.close();
  });

  it("another process's record stamped in the future is believed only up to now", async () => {
    const root = tempDir();
    const writer = openStore(root);
    const store = openStore(root);
    await store.ready;
    const cachePath = await commitAuto(writer.createSession(MODEL), "c");
    await writer.close();
    // Rewrite the writer's records as a clock two hours ahead would have written them.
    const log = `${root}/.kvkeep/index.log`;
    const ahead = Date.now() + 2 * 3600_000;
    const lines = (await fs.readFile(log, "utf8")).trim().split("\n").map((l) => JSON.stringify({ ...JSON.parse(l), u: ahead }));
    await fs.writeFile(log, `${lines.join("\n")}\n`);
    await fs.utimes(manifestPathOf(cachePath), ahead / 1000, ahead / 1000);
    expect((await store.usage()).count).toBe(1); // the records are read (and their times clamped) here
    await sleep(5);
    const { evicted } = await store.sweep({ maxIdleMs: 0 });
    expect(evicted).toHaveLength(1);
    await store.close();
  });

  it("clampUse never returns a time after now; stillVictim treats a future disk time as no newer use", () => {
    expect(clampUse(5_000, 1_000)).toBe(1_000);
    expect(clampUse(500, 1_000)).toBe(500);
    const idle = { cachePath: "/r/k/m/h.bin", reason: "idle" as const, entry: { cacheKey: "k", modelId: "m", configHash: "h", kind: "auto" as const, bytes: 1, lastUsedMs: 100 } };
    expect(stillVictim(idle, 10_000_000, 200, 1_000)).toBe(true);
    expect(stillVictim(idle, 500, 200, 1_000)).toBe(false);
  });
});
