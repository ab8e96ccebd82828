/**
 * Temp files of a writer that died mid-save (issue 11, item 6), with real writers killed by
 * SIGKILL: a temp is a leftover exactly when its writer is dead — also when its pid now
 * belongs to another live process (a reboot, or pid reuse), which a pid check alone takes
 * for alive and keeps forever. Leftovers are removed at open and by a sweep's walk, and
 * counted in usage() while they cannot be removed; a live writer's temp is never touched,
 * not even by a delete of its key.
 */
import { execFileSync } from "node:child_process";
import { existsSync, promises as fs } from "node:fs";
import path from "node:path";
import { beforeAll, describe, expect, it } from "vitest";
import { ownTempPath, ownWriterStamp, tempWriterAlive } from "../../src/durable/temp-owner.js";
import { openKvCacheStore } from "../../src/index.js";
import { KvCacheStoreImpl } from "../../src/facade/kvkeep-store.js";
import { bundleFixture, runChild } from "../helpers/child.js";
import { tempDir } from "../helpers/temp-root.js";

let writer: string;
beforeAll(async () => {
  writer = await bundleFixture("test/durable/fixtures/temp-writer.ts");
});

/** Start a writer that saves `bytes` to its turn's savePath; kill it there unless asked to keep it. */
async function crashedWriter(root: string, key: string, bytes: number, kill = true) {
  const run = runChild(writer, [root, key, String(bytes)]);
  const line = await run.waitForLine((l) => l.startsWith("{"));
  const paths = JSON.parse(line) as { savePath: string; cachePath: string };
  if (kill) {
    run.child.kill("SIGKILL");
    expect(await run.exited).toBe("SIGKILL");
  }
  return { ...paths, run };
}

/** The same temp name with another pid: what a pid reused after a reboot looks like. */
function withPid(tempPath: string, pid: number): string {
  return tempPath.replace(/\.(\d+)-([0-9a-z]+-)?([0-9a-z]+)\.tmp$/, (_m, _pid, stamp: string | undefined, unique: string) => `.${pid}-${stamp ?? ""}${unique}.tmp`);
}

const linux = process.platform === "linux";

describe("temp files of dead writers", () => {
  it.runIf(linux)("a crashed writer's temp whose pid now belongs to a live process is a leftover: removed at open", async () => {
    const root = tempDir();
    const { savePath } = await crashedWriter(root, "c", 50_000);
    // Its pid is reused by a live, unrelated process (here: our parent).
    const reused = withPid(savePath, process.ppid);
    await fs.rename(savePath, reused);
    expect(tempWriterAlive(path.basename(reused))).toBe(false);
    const store = openKvCacheStore({ root });
    expect(await store.ready).toMatchObject({ removedTemps: 1 });
    expect(existsSync(reused)).toBe(false);
    await store.close();
  });

  it("a crashed writer's temp is removed at open; a live writer's is kept, even by a delete of its key", async () => {
    const root = tempDir();
    // (the live one first: its own store's recovery at open would remove the dead one's temp)
    const live = await crashedWriter(root, "live", 10_000, false);
    const dead = await crashedWriter(root, "dead", 10_000);
    try {
      const store = openKvCacheStore({ root });
      expect(await store.ready).toMatchObject({ removedTemps: 1 });
      expect(existsSync(dead.savePath)).toBe(false);
      expect(existsSync(live.savePath)).toBe(true);
      await store.delete({ kvCacheKey: "live" });
      expect(existsSync(live.savePath)).toBe(true); // its turn ends it (and its commit is refused)
      await store.close();
    } finally {
      live.run.child.kill("SIGKILL");
      await live.run.exited;
    }
  });

  it("a writer that dies while the store is open: its temp is removed by the next sweep's walk", async () => {
    const root = tempDir();
    const store = new KvCacheStoreImpl({ root, retentionInternals: { resyncEverySweeps: 1 } });
    await store.ready;
    const { savePath } = await crashedWriter(root, "c", 10_000);
    expect(existsSync(savePath)).toBe(true);
    await store.sweep();
    expect(existsSync(savePath)).toBe(false);
    await store.close();
  });

  it.runIf(linux)("a leftover that cannot be removed (a read-only directory) is counted in usage() until a later walk removes it", async (ctx) => {
    const root = tempDir();
    const { savePath } = await crashedWriter(root, "c", 300_000);
    const dir = path.dirname(savePath);
    try {
      execFileSync("mount", ["--bind", "-o", "ro", dir, dir], { stdio: "pipe" });
    } catch (error) {
      console.warn(`SKIPPED: cannot bind-mount read-only here (${String((error as { stderr?: Buffer }).stderr ?? error).trim()})`);
      ctx.skip();
    }
    let mounted = true;
    try {
      execFileSync("mount", ["-o", "remount,bind,ro", dir], { stdio: "pipe" });
      const store = new KvCacheStoreImpl({ root, retentionInternals: { resyncEverySweeps: 1 } });
      await store.ready;
      expect(existsSync(savePath)).toBe(true);
      const usage = await store.usage();
      expect(usage.staleTempBytes).toBe(300_000);
      expect(usage.bytes).toBe(usage.autoBytes + usage.namedBytes + 300_000);
      execFileSync("umount", [dir]);
      mounted = false;
      await store.sweep();
      expect(existsSync(savePath)).toBe(false);
      expect((await store.usage()).staleTempBytes).toBe(0);
      await store.close();
    } finally {
      if (mounted) execFileSync("umount", ["-l", dir]);
    }
  });

  it("names carry the writer's pid and stamp; this process's own temps are alive, an unknown pid's are not", () => {
    const name = path.basename(ownTempPath("/r/k/m/h.bin"));
    const stamp = ownWriterStamp();
    expect(name).toMatch(stamp ? new RegExp(`^h\\.bin\\.${process.pid}-${stamp}-[0-9a-z]+\\.tmp$`) : new RegExp(`^h\\.bin\\.${process.pid}-[0-9a-z]+\\.tmp$`));
    expect(tempWriterAlive(name)).toBe(true);
    expect(tempWriterAlive(`h.bin.${2 ** 22 + 11}-${stamp ?? "0"}-abc.tmp`)).toBe(false);
    // A name from before stamps existed: the pid alone decides.
    expect(tempWriterAlive(`h.bin.${process.ppid}-abc.tmp`)).toBe(true);
    if (linux) expect(stamp).toMatch(/^[0-9a-f]{10}$/);
  });
});
