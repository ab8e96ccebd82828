/**
 * Issue 20, item 2: a home directory given as the root by mistake (`--root ~`,
 * `KVKEEP_DIR=$HOME`) loses nothing, and the same user files inside a real kvkeep root are
 * left alone too. The real built CLI and real stores on real directories.
 */
import { spawnSync } from "node:child_process";
import { existsSync, promises as fs } from "node:fs";
import path from "node:path";
import { afterEach, describe, expect, it } from "vitest";
import { openKvCacheStore } from "../../src/index.js";
import { tempPathFor } from "../../src/layout/paths.js";
import { customTurn } from "../helpers/fake-engine.js";
import { tempDir } from "../helpers/temp-root.js";
import { CONFIG, cacheFiles, json, jsonError, kvkeep, rootWith } from "./helpers.js";

/** What a careless `--root ~` meets: files named like kvkeep's at kvkeep's depths. */
const USER_FILES: Record<string, string> = {
  "Downloads/isos/disk-1.bin": "an ISO image",
  "games/save/slot_1.bin": "a saved game",
  "games/save/slot_1.meta.json": '{"level": 3}',
  "games/save/slot_1.lock": "",
  "Documents/taxes/report.1234-abc.tmp": "a draft",
  "Documents/taxes/report.bin.1234-abc.tmp": "another draft",
  "projects/app/yarn.lock": "# yarn lockfile v1\n",
  "projects/app/package.meta.json": "{}",
  "notes.bin": "top-level notes",
  "photos/2023/trip/img.bin": "deeper than any cache",
};
const USER_DIRS = ["Documents/empty/", "music/albums/"];

async function plantUserFiles(dir: string): Promise<void> {
  for (const [rel, text] of Object.entries(USER_FILES)) {
    await fs.mkdir(path.dirname(path.join(dir, rel)), { recursive: true });
    await fs.writeFile(path.join(dir, rel), text);
  }
  for (const rel of USER_DIRS) await fs.mkdir(path.join(dir, rel), { recursive: true });
}

/** Every planted user file and directory still there, byte for byte; the number missing or changed. */
async function userFilesLost(dir: string): Promise<number> {
  let lost = 0;
  for (const [rel, text] of Object.entries(USER_FILES)) {
    const now = await fs.readFile(path.join(dir, rel), "utf8").catch(() => null);
    if (now !== text) lost++;
  }
  for (const rel of USER_DIRS) if (!existsSync(path.join(dir, rel))) lost++;
  return lost;
}

/** Everything under `dir`, with contents (directories as "dir"). */
async function snapshot(dir: string): Promise<Record<string, string>> {
  const out: Record<string, string> = {};
  for (const entry of await fs.readdir(dir, { recursive: true, withFileTypes: true })) {
    const full = path.join(entry.parentPath, entry.name);
    out[path.relative(dir, full)] = entry.isDirectory() ? "dir" : await fs.readFile(full, "utf8");
  }
  return out;
}

const savedDir = process.env.KVKEEP_DIR;
afterEach(() => {
  if (savedDir === undefined) delete process.env.KVKEEP_DIR;
  else process.env.KVKEEP_DIR = savedDir;
});

describe("a directory that is not a kvkeep root (issue 20, item 2)", () => {
  it("--root or KVKEEP_DIR at a home directory: verify --fix, gc, rm --all --yes refuse it with ROOT_NOT_KVKEEP, exit 1, and delete nothing", async () => {
    const home = tempDir("kvkeep-home-");
    await plantUserFiles(home);
    const before = await snapshot(home);
    const mutating = [
      ["verify", "--fix"],
      ["gc", "--max-bytes", "0", "--max-idle", "0", "--evict-named"],
      ["gc", "--dry-run"],
      ["rm", "--all", "--yes"],
      ["rm", "Downloads", "games", "--yes"],
      ["rm", "--all", "--dry-run"],
    ];
    for (const how of ["--root", "KVKEEP_DIR"] as const) {
      for (const args of mutating) {
        const run =
          how === "--root" ? await kvkeep(["--root", home, "--json", ...args]) : await kvkeep(["--json", ...args], { env: { KVKEEP_DIR: home } });
        expect(run.code, `${how} ${args.join(" ")}: ${run.stderr}`).toBe(1);
        expect(jsonError(run), `${how} ${args.join(" ")}`).toMatchObject({ code: "ROOT_NOT_KVKEEP", exitCode: 1 });
        expect(jsonError(run).message).toContain("--adopt");
      }
    }
    // Text mode says what is wrong and what to do, in one line.
    const text = await kvkeep(["--root", home, "gc"]);
    expect(text.stderr).toMatch(/^kvkeep gc: .* is not a kvkeep cache root: it is not empty \("Documents", "Downloads", "games", …\).*nothing was changed.*--adopt/);
    // Reading is harmless: scan and usage still look, and say it is not a root.
    const scan = await kvkeep(["--root", home, "scan"]);
    expect(scan.code).toBe(0);
    expect(scan.stderr).toContain("is not marked as a kvkeep cache root");
    // A store refuses to open it, by --root or by KVKEEP_DIR, and creates nothing (not even .kvkeep/).
    expect(() => openKvCacheStore({ root: home })).toThrow(expect.objectContaining({ code: "ROOT_NOT_KVKEEP" }));
    process.env.KVKEEP_DIR = home;
    expect(() => openKvCacheStore()).toThrow(expect.objectContaining({ code: "ROOT_NOT_KVKEEP" }));
    expect(await snapshot(home)).toEqual(before);
    expect(await userFilesLost(home)).toBe(0);
  });

  it("--adopt marks the directory, and even then gc, verify --fix and rm --all remove none of the user's files", async () => {
    const home = tempDir("kvkeep-home-");
    await plantUserFiles(home);
    const gc = await kvkeep(["--root", home, "--json", "gc", "--adopt", "--max-bytes", "0", "--max-idle", "0", "--evict-named"]);
    expect(gc.code, gc.stderr).toBe(0);
    expect(json(gc)).toMatchObject({ evicted: [], removedFiles: 0 });
    expect(existsSync(path.join(home, ".kvkeep", "root.json"))).toBe(true);
    // Marked now: no --adopt needed.
    const verify = await kvkeep(["--root", home, "--json", "verify", "--fix"]);
    expect(verify.code, verify.stderr).toBe(0);
    const results = json<{ results: Array<{ cachePath: string; status: string }>; removedFiles: number }>(verify);
    expect(results.removedFiles).toBe(0);
    expect(results.results.map((r) => [path.relative(home, r.cachePath), r.status]).sort()).toEqual([
      ["Downloads/isos/disk-1.bin", "foreign"],
      ["games/save/slot_1.bin", "foreign"],
    ]);
    const rm = await kvkeep(["--root", home, "--json", "rm", "--all", "--yes"]);
    expect(rm.code, rm.stderr).toBe(0);
    expect(json(rm)).toMatchObject({ removed: [], removedFiles: 0 });
    const rmKeys = await kvkeep(["--root", home, "--json", "rm", "games", "projects", "--yes"]);
    expect(json(rmKeys)).toMatchObject({ removedFiles: 0 });
    expect(json(rmKeys).leftFiles.map((f: string) => path.relative(home, f)).sort()).toEqual([
      "games/save/slot_1.bin",
      "games/save/slot_1.lock",
      "games/save/slot_1.meta.json",
      "projects/app/package.meta.json",
      "projects/app/yarn.lock",
    ]);
    expect(await userFilesLost(home)).toBe(0);
  });

  it("inside a real root the same user files survive a store's open, verify --fix, gc, rm --all, delete and sweeps; kvkeep's own files go, every one counted", async () => {
    const root = await rootWith({ "chat-1": { m: 2 }, "chat-2": { m: 3 } }, { auto: 3 });
    await plantUserFiles(root);
    // A crashed writer's temp beside a real cache: kvkeep's, and counted when recovery removes it.
    const dead = spawnSync(process.execPath, ["-e", ""]).pid!;
    const leftover = tempPathFor(path.join(root, "chat-1", "m", `${CONFIG}.bin`), dead, "0123456789");
    await fs.writeFile(leftover, "half a state");

    // A store's open (recovery) and its delete of a key holding user files only.
    const store = openKvCacheStore({ root });
    expect(await store.ready).toMatchObject({ removedTemps: 1, removedManifests: 0 });
    expect(existsSync(leftover)).toBe(false);
    await store.delete({ kvCacheKey: "games" });
    await store.delete({ kvCacheKey: "Downloads", modelId: "isos" });
    await store.close();
    expect(await userFilesLost(root)).toBe(0);

    // verify --fix: the real caches are ok, the user's .bin files foreign, nothing removed.
    const verify = await kvkeep(["--root", root, "--json", "verify", "--fix"]);
    expect(verify.code, verify.stderr).toBe(0);
    const checked = json<{ results: Array<{ cacheKey: string; status: string }>; removedFiles: number }>(verify);
    expect(checked.removedFiles).toBe(0);
    expect(checked.results.filter((r) => r.status === "ok")).toHaveLength(5);
    expect(checked.results.filter((r) => r.status === "foreign").map((r) => r.cacheKey).sort()).toEqual(["Downloads", "games"]);

    // gc evicting everything evicts the five caches and nothing of the user's; each cache is
    // its file, manifest and lock file.
    const gc = await kvkeep(["--root", root, "--json", "gc", "--max-bytes", "0", "--max-idle", "0", "--evict-named"]);
    expect(gc.code, gc.stderr).toBe(0);
    const swept = json<{ evicted: unknown[]; removedFiles: number }>(gc);
    expect(swept.evicted).toHaveLength(5);
    expect(swept.removedFiles).toBeGreaterThanOrEqual(10);
    expect(await cacheFiles(root)).toEqual(["Downloads/isos/disk-1.bin", "games/save/slot_1.bin"]);
    expect(await userFilesLost(root)).toBe(0);

    // rm --all with new caches: only those go, and the summary counts their files.
    await rootWith({ "chat-3": { m: 2 } }, { root, auto: 1 });
    const rm = await kvkeep(["--root", root, "rm", "--all", "--yes"]);
    expect(rm.code, rm.stderr).toBe(0);
    expect(rm.stdout).toMatch(/removed 2 caches .* of 2 keys\nremoved [4-6] files; left [0-9]+ files? that (is|are) not kvkeep's/);
    expect(await userFilesLost(root)).toBe(0);

    // A store's sweep with everything evictable, and delete({ all }).
    const last = openKvCacheStore({ root, maxBytes: 0, maxIdleMs: 0, evictNamed: true });
    await customTurn(last.createSession("m"), "chat-4", CONFIG, 2);
    await last.sweep(); // (the background sweep after the commit may have evicted it already)
    expect(await cacheFiles(root)).toEqual(["Downloads/isos/disk-1.bin", "games/save/slot_1.bin"]);
    await last.delete({ all: true });
    await last.close();
    expect(await userFilesLost(root)).toBe(0);
  });

  it("a root marks itself: a missing or empty directory is marked at open, one made by an earlier kvkeep (.kvkeep/index.log) is recognised and marked", async () => {
    const base = tempDir();
    const fresh = path.join(base, "fresh");
    await openKvCacheStore({ root: fresh }).close();
    expect(JSON.parse(await fs.readFile(path.join(fresh, ".kvkeep", "root.json"), "utf8"))).toMatchObject({ kvkeep: "cache-root", format: 1 });

    // An earlier version's root: caches and its index log, no marker.
    const legacy = await rootWith({ "chat-1": { m: 2 } });
    await fs.rm(path.join(legacy, ".kvkeep", "root.json"));
    expect(existsSync(path.join(legacy, ".kvkeep", "index.log"))).toBe(true);
    const gc = await kvkeep(["--root", legacy, "--json", "gc", "--max-bytes", "0", "--evict-named", "--max-idle", "0"]);
    expect(gc.code, gc.stderr).toBe(0);
    expect(json(gc).evicted).toHaveLength(1);
    expect(existsSync(path.join(legacy, ".kvkeep", "root.json"))).toBe(true);

    // The same caches copied without their .kvkeep/: foreign until adopted.
    const copied = path.join(base, "copied");
    await rootWith({ "chat-1": { m: 2 } }, { root: copied });
    await fs.rm(path.join(copied, ".kvkeep"), { recursive: true });
    expect(() => openKvCacheStore({ root: copied })).toThrow(expect.objectContaining({ code: "ROOT_NOT_KVKEEP" }));
    expect(existsSync(path.join(copied, ".kvkeep"))).toBe(false);
    const adopted = openKvCacheStore({ root: copied, adopt: true });
    expect((await adopted.usage()).count).toBe(1);
    await adopted.close();
    expect(existsSync(path.join(copied, ".kvkeep", "root.json"))).toBe(true);
  });
});
