/** The write-behind queue of uploads (no I/O): order, coalescing, bound, cancel, drain. */
import { describe, expect, it } from "vitest";
import { WriteBehind } from "../../src/remote/write-behind.js";

/** A runner whose jobs finish only when the test says so. */
function gatedRunner() {
  const started: string[] = [];
  const gates = new Map<string, () => void>();
  const run = (key: string, job: string): Promise<void> =>
    new Promise((resolve) => {
      started.push(`${key}:${job}`);
      gates.set(key, resolve);
    });
  const finish = async (key: string): Promise<void> => {
    gates.get(key)!();
    gates.delete(key);
    await new Promise((r) => setTimeout(r, 0));
  };
  return { started, run, finish };
}

describe("write-behind queue", () => {
  it("runs one job at a time in order; a newer job for a waiting cache replaces the older one", async () => {
    const r = gatedRunner();
    const discarded: string[] = [];
    const q = new WriteBehind(r.run, { maxPending: 10, concurrency: 1, onDiscard: (k, why) => discarded.push(`${k}:${why}`) });
    q.push("a", "1");
    q.push("b", "1");
    q.push("b", "2"); // b:1 never ran: b:2 supersedes it
    expect(r.started).toEqual(["a:1"]);
    await r.finish("a");
    expect(r.started).toEqual(["a:1", "b:2"]);
    expect(discarded).toEqual(["b:replaced"]);
    await r.finish("b");
    expect(q.size).toBe(0);
  });

  it("never runs two jobs of one cache at once: a job pushed while its cache uploads waits for it", async () => {
    const r = gatedRunner();
    const q = new WriteBehind(r.run, { maxPending: 10, concurrency: 2 });
    q.push("a", "1");
    q.push("a", "2");
    q.push("b", "1");
    expect(r.started).toEqual(["a:1", "b:1"]);
    await r.finish("a");
    expect(r.started).toEqual(["a:1", "b:1", "a:2"]);
    await r.finish("a");
    await r.finish("b");
  });

  it("stays bounded: past maxPending waiting caches the oldest waiting job is dropped", async () => {
    const r = gatedRunner();
    const discarded: string[] = [];
    const q = new WriteBehind(r.run, { maxPending: 2, concurrency: 1, onDiscard: (k, why) => discarded.push(`${k}:${why}`) });
    for (const key of ["a", "b", "c", "d", "e"]) q.push(key, "1");
    expect(q.size).toBe(3); // a running, d and e waiting
    expect(discarded).toEqual(["b:full", "c:full"]);
    await r.finish("a");
    await r.finish("d");
    await r.finish("e");
    expect(r.started).toEqual(["a:1", "d:1", "e:1"]);
  });

  it("cancel drops the waiting jobs it matches; drain waits for what runs and what waits", async () => {
    const r = gatedRunner();
    const q = new WriteBehind(r.run, { maxPending: 10, concurrency: 1 });
    await q.drain(); // nothing queued: resolves at once
    q.push("x/1", "1");
    q.push("x/2", "1");
    q.push("y/1", "1");
    q.cancel((key) => key.startsWith("x/"));
    let drained = false;
    const draining = q.drain().then(() => (drained = true));
    await r.finish("x/1"); // the running one was not cancelled
    expect(drained).toBe(false);
    await r.finish("y/1");
    await draining;
    expect(r.started).toEqual(["x/1:1", "y/1:1"]);
  });

  it("goes on after a job that throws", async () => {
    const ran: string[] = [];
    const q = new WriteBehind(
      async (key: string) => {
        ran.push(key);
        if (key === "bad") throw new Error("boom");
      },
      { maxPending: 10, concurrency: 1 },
    );
    q.push("bad", "1");
    q.push("good", "1");
    await q.drain();
    expect(ran).toEqual(["bad", "good"]);
  });
});
