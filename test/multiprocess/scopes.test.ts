/**
 * Two processes on one root, in different scopes: what one commits is found by the other only
 * in its own scope — through the shared index log (records carry the scope in their path) and
 * through the walk at open — never across scopes; a process of the same scope resumes and
 * reuses it.
 */
import { describe, expect, it } from "vitest";
import { KvCacheStoreImpl } from "../../src/facade/kvkeep-store.js";
import { bundleFixture, runChild } from "../helpers/child.js";
import { tempDir } from "../helpers/temp-root.js";
import { configHash, conversation, MODEL, user } from "../index/helpers.js";

interface Probe {
  deep: string | null;
  newChat: string | null;
  chat: { cachePath: string; savedCount: number; primed: boolean };
}

async function worker(root: string, scope: string, mode: "commit" | "probe"): Promise<any> {
  const run = runChild(await bundleFixture("test/multiprocess/fixtures/scope-worker.ts"), [root, scope, mode]);
  const line = await run.waitForLine((l) => l.startsWith("{"), 60_000);
  expect(await run.exited, run.stderr()).toBe(0);
  return JSON.parse(line);
}

describe("scopes across processes on one root", () => {
  it("a process of another scope (or of the shared space) sees nothing of what one scope committed; a process of the same scope resumes and reuses it", async () => {
    const root = tempDir();
    // This process's store is open before the commits: it learns of them from the index log's records.
    const watcher = new KvCacheStoreImpl({ root });
    await watcher.ready;
    const committed = (await worker(root, "alice", "commit")) as { auto: string; named: string };

    const mallory = (await worker(root, "mallory", "probe")) as Probe;
    expect([mallory.deep, mallory.newChat]).toEqual([null, null]);
    expect(mallory.chat).toMatchObject({ savedCount: 0, primed: true });
    expect(mallory.chat.cachePath).not.toBe(committed.named);
    const shared = (await worker(root, "", "probe")) as Probe;
    expect([shared.deep, shared.newChat]).toEqual([null, null]);
    expect(shared.chat).toMatchObject({ savedCount: 0, primed: true });

    const alice = (await worker(root, "alice", "probe")) as Probe;
    expect(alice.deep).toBe(committed.auto);
    expect([committed.auto, committed.named]).toContain(alice.newChat);
    expect(alice.chat).toMatchObject({ cachePath: committed.named, savedCount: 3, primed: false });

    // The same answers from the log's records in a store that was open all along.
    const history = [...conversation("secret", 2), user("and then?")];
    expect(await watcher.findPrefix({ modelId: MODEL, configHash, history, scope: "mallory" })).toBeNull();
    expect(await watcher.findPrefix({ modelId: MODEL, configHash, history })).toBeNull();
    expect(await watcher.findPrefix({ modelId: MODEL, configHash, history, scope: "alice" })).toMatchObject({ cachePath: committed.auto });
    expect(watcher.retention.stats.resyncs).toBe(0); // (learnt from records, not from a walk)
    await watcher.close();
  }, 120_000);
});
