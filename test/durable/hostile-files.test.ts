/**
 * Hostile files planted below a root (issue 11, items 2–4 and the directory cases of 7).
 * Every file kvkeep reads is opened without following a symlink and without blocking,
 * checked to be a regular file on its descriptor, and manifests are size-capped: a FIFO,
 * device, symlink, directory or huge file where kvkeep keeps a file is an untrusted cache
 * (re-primed) or a clear UNSAFE_PATH error, at once — never a hang, never a read outside
 * the root, never a file created or opened outside it.
 *
 * FIFO and device cases run in a child process killed after a timeout: a regression blocks
 * a libuv thread in open(), after which not even process.exit() returns.
 */
import { existsSync, promises as fs, lstatSync } from "node:fs";
import path from "node:path";
import { beforeAll, describe, expect, it } from "vitest";
import { generateConfigHash, type KvCacheSession, openKvCacheStore, type TurnHandle } from "../../src/index.js";
import { createXxh64 } from "../../src/keys/hash.js";
import { KvCacheStoreImpl } from "../../src/facade/kvkeep-store.js";
import { bundleFixture, CHILD_BACKENDS, type ChildBackend, runChildScenario } from "../helpers/child.js";
import { countingPrime, customTurn } from "../helpers/fake-engine.js";
import { tempDir } from "../helpers/temp-root.js";

const configHash = generateConfigHash("sys");
const KILL_AFTER_MS = 30_000;
let worker: string;

beforeAll(async () => {
  worker = await bundleFixture("test/durable/fixtures/hostile-worker.ts");
});

/** Run one scenario in a child; a child still running after KILL_AFTER_MS is killed and the test fails. */
function scenario(name: string, backend: ChildBackend): Promise<{ result: Record<string, unknown>; rssGrowthMiB: number }> {
  return runChildScenario(worker, [tempDir(), name], backend, KILL_AFTER_MS);
}

/** What a turn meeting a hostile cache file or manifest gets: a fresh prime, the bad file reported as corrupt. */
const reprimed = { primed: true, savedCount: 0, regularFile: true, content: "primed state", refused: "corrupt" };
describe.each(CHILD_BACKENDS)("FIFOs, devices and huge files where kvkeep reads (child process, kill timeout) [%s]", (backend) => {
  it("a FIFO as a manifest: the turn re-primes at once, and scan/verify finish", async () => {
    const { result } = await scenario("fifo-manifest", backend);
    expect(result.turn).toEqual(reprimed);
    expect(result.cli).toMatchObject({ scan: 0 });
  }, KILL_AFTER_MS + 10_000);

  it("a FIFO as a cache file: the turn re-primes at once", async () => {
    const { result } = await scenario("fifo-bin", backend);
    expect(result.turn).toEqual(reprimed);
  }, KILL_AFTER_MS + 10_000);

  it("a symlink to /dev/zero as a manifest: re-primed without reading the device", async () => {
    const { result, rssGrowthMiB } = await scenario("devzero-manifest", backend);
    expect(result.turn).toEqual(reprimed);
    expect(rssGrowthMiB).toBeLessThan(200);
  }, KILL_AFTER_MS + 10_000);

  it("a character device node (/dev/zero's) as a manifest: re-primed without reading it", async (ctx) => {
    const { result, rssGrowthMiB } = await scenario("chardev-manifest", backend);
    if (result.skipped) {
      console.warn(`SKIPPED device-node manifest: ${String(result.skipped)}`);
      ctx.skip();
    }
    expect(result.turn).toEqual(reprimed);
    expect(rssGrowthMiB).toBeLessThan(200);
  }, KILL_AFTER_MS + 10_000);

  it("a 1.5 GiB sparse manifest is refused by its size, never read: re-primed", async () => {
    const { result, rssGrowthMiB } = await scenario("sparse-manifest", backend);
    expect(result.turn).toEqual(reprimed);
    expect(rssGrowthMiB).toBeLessThan(200);
  }, KILL_AFTER_MS + 10_000);

  it("a FIFO as a lock file is a clear UNSAFE_PATH, not a hang (the fallback takes no OS lock and ignores it)", async () => {
    const { result } = await scenario("fifo-lock", backend);
    if (backend === "native") expect(result.turn).toEqual({ error: "UNSAFE_PATH" });
    else expect(result.turn).toMatchObject({ primed: false, savedCount: 3 });
  }, KILL_AFTER_MS + 10_000);

  it("a FIFO as the retention index log: commits, usage, sweeps and close all finish", async () => {
    const { result } = await scenario("fifo-index-log", backend);
    expect(result.usage).toMatchObject({ count: 2 });
    expect(result.turn).toMatchObject({ primed: false, savedCount: 3 });
  }, KILL_AFTER_MS + 10_000);
});

/** A root with one committed cache, and a directory beside the root standing for "outside". */
async function rootAndOutside(): Promise<{ root: string; outside: string; cachePath: string; store: KvCacheStoreImpl }> {
  const base = tempDir();
  const root = path.join(base, "root");
  const outside = path.join(base, "outside");
  await fs.mkdir(outside, { recursive: true });
  const store = new KvCacheStoreImpl({ root });
  const turn = await customTurn(store.createSession("m"), "c", configHash, 3);
  return { root, outside, cachePath: turn.cachePath, store };
}

/**
 * A turn (or use) on a cache whose lock file is a planted symlink: refused with UNSAFE_PATH
 * by the native backend; the JS fallback takes no OS lock file, so it never opens it at all.
 */
async function expectLockRefused(store: KvCacheStoreImpl, session: KvCacheSession, attempt: Promise<unknown>): Promise<void> {
  if (store.backend !== "js-fallback") {
    await expect(attempt).rejects.toMatchObject({ code: "UNSAFE_PATH" });
    return;
  }
  const value = await attempt;
  if (value && typeof value === "object" && "savePath" in value) await session.rollback(value as TurnHandle);
}

describe("symlinks below the root (issue 11, items 3 and 4)", () => {
  it("a dangling symlink at a cache's .lock: nothing is created outside the root, and the turn is refused with UNSAFE_PATH", async () => {
    const { outside, cachePath, store } = await rootAndOutside();
    const lock = cachePath.replace(/\.bin$/, ".lock");
    await fs.rm(lock, { force: true });
    const target = path.join(outside, "created-through-the-lock");
    await fs.symlink(target, lock);
    const session = store.createSession("m");
    await expectLockRefused(store, session, session.beginTurn({ kind: "custom", customKey: "c", configHash, primeIfMissing: countingPrime() }));
    expect(existsSync(target)).toBe(false);
    await expectLockRefused(store, session, store.useCache(cachePath, {}, async () => 1));
    await expect(store.sweep({ maxBytes: 0, maxIdleMs: 0 })).resolves.toBeDefined();
    expect(existsSync(target)).toBe(false);
    await store.close();
  });

  it("a .lock linked to an existing file outside: the file is never opened for writing or locked (content and times unchanged)", async () => {
    const { outside, cachePath, store } = await rootAndOutside();
    const lock = cachePath.replace(/\.bin$/, ".lock");
    await fs.rm(lock, { force: true });
    const victim = path.join(outside, "victim.txt");
    await fs.writeFile(victim, "keep me");
    const before = await fs.stat(victim, { bigint: true });
    await fs.symlink(victim, lock);
    const session = store.createSession("m");
    await expectLockRefused(store, session, session.beginTurn({ kind: "custom", customKey: "c", configHash, primeIfMissing: countingPrime() }));
    const after = await fs.stat(victim, { bigint: true });
    expect(await fs.readFile(victim, "utf8")).toBe("keep me");
    expect([after.mtimeNs, after.ctimeNs]).toEqual([before.mtimeNs, before.ctimeNs]);
    await store.close();
  });

  it("a directory level below the root swapped for a symlink is never walked through by the lock", async () => {
    const { root, outside, store } = await rootAndOutside();
    await fs.symlink(outside, path.join(root, "planted"));
    const session = store.createSession("m");
    await expect(session.beginTurn({ kind: "custom", customKey: "planted", configHash, primeIfMissing: countingPrime() })).rejects.toMatchObject({
      code: "UNSAFE_PATH",
    });
    expect(await fs.readdir(outside)).toEqual([]);
    await store.close();
  });

  it("<root>/.kvkeep as a symlink: commits, sweeps, usage, compaction and close create nothing outside the root", async () => {
    const base = tempDir();
    const root = path.join(base, "root");
    const outside = path.join(base, "outside");
    await fs.mkdir(outside, { recursive: true });
    await fs.mkdir(root, { recursive: true });
    await fs.symlink(outside, path.join(root, ".kvkeep"));
    const store = new KvCacheStoreImpl({ root, retentionInternals: { compactLogBytes: 1, resyncEverySweeps: 1 } });
    const session = store.createSession("m");
    for (let i = 0; i < 4; i++) await customTurn(session, `c${i}`, configHash, 2);
    expect((await store.usage()).count).toBe(4);
    await store.sweep();
    await store.sweep({ maxBytes: 0 });
    await store.close();
    await store.delete({ kvCacheKey: "c0" }).catch(() => {}); // after close: refused, but never through the link
    expect(await fs.readdir(outside)).toEqual([]);
  });

  it("a .bin linked to a file outside the root, with a manifest describing that file exactly (verify: size), is never trusted", async () => {
    const { root, outside, cachePath, store } = await rootAndOutside();
    await store.close();
    const secret = path.join(outside, "passwd");
    await fs.writeFile(secret, "root:x:0:0:root:/root:/bin/bash\n");
    const st = await fs.stat(secret, { bigint: true });
    const manifestPath = cachePath.replace(/\.bin$/, ".meta.json");
    const manifest = JSON.parse(await fs.readFile(manifestPath, "utf8"));
    const hasher = createXxh64();
    hasher.update(await fs.readFile(secret));
    manifest.current = { ...manifest.current, size: Number(st.size), ino: st.ino.toString(), mtimeNs: st.mtimeNs.toString(), xxh64: hasher.digestHex(), messageCount: 40 };
    manifest.pending = null;
    await fs.writeFile(manifestPath, JSON.stringify(manifest));
    await fs.unlink(cachePath);
    await fs.symlink(secret, cachePath);
    for (const verify of ["size", "checksum"] as const) {
      const reader = openKvCacheStore({ root, verify });
      const session = reader.createSession("m");
      const turn = await session.beginTurn({ kind: "custom", customKey: "c", configHash, primeIfMissing: countingPrime() });
      expect(turn, verify).toMatchObject({ primed: true, savedCount: 0 });
      // The engine is handed a regular file inside the root, never the link.
      expect(lstatSync(turn.cachePath).isFile(), verify).toBe(true);
      expect(path.relative(root, await fs.realpath(turn.cachePath)).startsWith(".."), verify).toBe(false);
      await session.commitTurn(turn, { kind: "static", messageCount: 1 }).catch(() => {});
      await session.rollback(turn);
      await reader.close();
      // Plant it again for the next verify mode.
      await fs.rm(cachePath, { force: true });
      await fs.writeFile(manifestPath, JSON.stringify(manifest));
      await fs.symlink(secret, cachePath);
    }
    expect(await fs.readFile(secret, "utf8")).toBe("root:x:0:0:root:/root:/bin/bash\n");
  });

  it("a manifest that is a symlink to a valid manifest outside the root is not read: re-primed", async () => {
    const { root, outside, cachePath, store: first } = await rootAndOutside();
    await first.close();
    const manifestPath = cachePath.replace(/\.bin$/, ".meta.json");
    const copy = path.join(outside, "manifest.json");
    await fs.copyFile(manifestPath, copy);
    await fs.unlink(manifestPath);
    await fs.symlink(copy, manifestPath);
    const store = openKvCacheStore({ root });
    const session = store.createSession("m");
    const turn = await session.beginTurn({ kind: "custom", customKey: "c", configHash, primeIfMissing: countingPrime() });
    expect(turn.primed).toBe(true);
    await session.rollback(turn);
    expect(existsSync(copy)).toBe(true); // the link was removed, not its target
    await store.close();
  });
});

describe("a directory where a cache file or manifest should be (issue 11, item 7)", () => {
  for (const [which, storeMeetingIt] of [
    ["bin", "a restarted store"],
    ["manifest", "a restarted store"],
    ["bin", "the store that committed it"],
    ["manifest", "the store that committed it"],
  ] as const) {
    it(`a ${which} path that is a directory is a bad cache for ${storeMeetingIt}: removed (re-primed), and commits work again`, async () => {
      const { root, cachePath, store: first } = await rootAndOutside();
      const target = which === "bin" ? cachePath : cachePath.replace(/\.bin$/, ".meta.json");
      await fs.rm(target);
      await fs.mkdir(path.join(target, "inside"), { recursive: true });
      await fs.writeFile(path.join(target, "inside", "f"), "x");
      let store = first;
      if (storeMeetingIt === "a restarted store") {
        await first.close();
        store = new KvCacheStoreImpl({ root });
      }
      const session = store.createSession("m");
      const turn = await session.beginTurn({ kind: "custom", customKey: "c", configHash, primeIfMissing: countingPrime() });
      // A store that trusts the file it committed (same inode) keeps using it; a bin that is
      // a directory, or any store that must read the manifest, re-primes.
      expect(turn.primed).toBe(which === "bin" || storeMeetingIt === "a restarted store");
      await fs.writeFile(turn.savePath, "new state");
      expect(await session.commitTurn(turn, { kind: "static", messageCount: 2 })).toMatchObject({ committed: true });
      const next = await session.beginTurn({ kind: "custom", customKey: "c", configHash, primeIfMissing: countingPrime() });
      expect(next).toMatchObject({ primed: false, savedCount: 2 });
      await session.rollback(next);
      await store.close();
    });
  }
});
