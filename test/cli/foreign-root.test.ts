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
import { scopeIdOf } from "../../src/keys/scope.js";
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

/**
 * Where isolation scopes meet the root's proofs: scoped caches live under
 * `.scopes/<scope id>/<key>/<model>/`, two levels deeper than the shared space, and their
 * manifests name the scope. What makes them kvkeep's there must hold as it does in the shared
 * space — and nothing a user put under `.scopes/` may be taken for kvkeep's.
 */
describe("scoped caches in a kvkeep root (issue 20: scopes and ownership together)", () => {
  const ALICE = "tenant:alice";
  const BOB = "tenant:bob";
  const alice = scopeIdOf(ALICE);
  const bob = scopeIdOf(BOB);

  /** User files under `.scopes/`: beside the scope spaces, in a space at cache depth, under a name no scope has. */
  const SCOPED_USER_FILES: Record<string, string> = {
    ".scopes/notes.txt": "my notes",
    [`.scopes/${alice}/notes.txt`]: "a file in a scope's space",
    [`.scopes/${alice}/x/y/z.bin`]: "a .bin at a cache's depth, no manifest",
    [`.scopes/${alice}/x/y/z.lock`]: "",
    [`.scopes/${alice}/x/y/z.bin.1234-abc.tmp`]: "named like a temp, no kvkeep stamp",
    [`.scopes/${alice}/x/y/stray.meta.json`]: '{"not":"a manifest"}',
    ".scopes/not-a-scope-id/chat/qwen/c.bin": "under a name that is no scope id",
    [`.scopes/${alice}/deeper/than/any/cache.bin`]: "deeper than any cache",
  };
  const SCOPED_USER_DIRS = [`.scopes/${alice}/x/empty/`, ".scopes/empty-folder/"];

  async function plantScopedUserFiles(root: string): Promise<void> {
    for (const [rel, text] of Object.entries(SCOPED_USER_FILES)) {
      await fs.mkdir(path.dirname(path.join(root, rel)), { recursive: true });
      await fs.writeFile(path.join(root, rel), text);
    }
    for (const rel of SCOPED_USER_DIRS) await fs.mkdir(path.join(root, rel), { recursive: true });
  }

  async function scopedUserFilesLost(root: string): Promise<string[]> {
    const lost: string[] = [];
    for (const [rel, text] of Object.entries(SCOPED_USER_FILES)) {
      if ((await fs.readFile(path.join(root, rel), "utf8").catch(() => null)) !== text) lost.push(rel);
    }
    for (const rel of SCOPED_USER_DIRS) if (!existsSync(path.join(root, rel))) lost.push(rel);
    return lost;
  }

  /** Every `.bin` under the root (scope spaces included), relative, sorted. */
  async function allBins(root: string): Promise<string[]> {
    const out: string[] = [];
    for (const entry of await fs.readdir(root, { recursive: true, withFileTypes: true })) {
      const rel = path.relative(root, path.join(entry.parentPath, entry.name));
      if (entry.isFile() && entry.name.endsWith(".bin") && !rel.startsWith(".kvkeep")) out.push(rel);
    }
    return out.sort();
  }

  const cacheAt = (scopeId: string | null, key: string, model = "qwen"): string =>
    path.join(...(scopeId === null ? [] : [".scopes", scopeId]), key, model, `${CONFIG}.bin`);

  it("scoped caches are proven, recovered, verified, evicted and removed as kvkeep's; user files under .scopes/ and caches copied across scopes never are", async () => {
    const root = tempDir("kvkeep-scoped-");
    const made = openKvCacheStore({ root });
    await customTurn(made.createSession("qwen"), "chat", CONFIG, 2);
    await customTurn(made.createSession("qwen", { scope: ALICE }), "chat", CONFIG, 4);
    await customTurn(made.createSession("qwen", { scope: ALICE }), "damaged", CONFIG, 2);
    await customTurn(made.createSession("qwen", { scope: ALICE }), "orphan", CONFIG, 2);
    await customTurn(made.createSession("qwen", { scope: BOB }), "bobonly", CONFIG, 3);
    await made.close();
    expect(existsSync(path.join(root, ".kvkeep", "root.json"))).toBe(true);

    await plantScopedUserFiles(root);
    // Bob's cache copied whole (file and manifest) into Alice's space and into the shared
    // space: its manifest names Bob's scope, so it is kvkeep's in neither place.
    const copies = [cacheAt(alice, "bobonly"), cacheAt(null, "bobonly")];
    for (const copy of copies) {
      await fs.mkdir(path.dirname(path.join(root, copy)), { recursive: true });
      await fs.copyFile(path.join(root, cacheAt(bob, "bobonly")), path.join(root, copy));
      await fs.copyFile(path.join(root, cacheAt(bob, "bobonly")).replace(/\.bin$/, ".meta.json"), path.join(root, copy).replace(/\.bin$/, ".meta.json"));
    }
    const userBins = [...copies, `.scopes/${alice}/x/y/z.bin`, ".scopes/not-a-scope-id/chat/qwen/c.bin", `.scopes/${alice}/deeper/than/any/cache.bin`].sort();
    // What a crashed writer left in a scope's space: a dead writer's temp beside a cache, and
    // a manifest whose cache file is gone.
    const dead = spawnSync(process.execPath, ["-e", ""]).pid!;
    const leftover = tempPathFor(path.join(root, cacheAt(alice, "chat")), dead, "0123456789");
    await fs.writeFile(leftover, "half a state");
    await fs.rm(path.join(root, cacheAt(alice, "orphan")));

    // Recovery at open removes both (counted), and nothing of the user's; retention counts
    // the four proven caches, not the copies.
    const store = openKvCacheStore({ root });
    expect(await store.ready).toMatchObject({ removedTemps: 1, removedManifests: 1 });
    expect(existsSync(leftover)).toBe(false);
    expect(existsSync(path.join(root, cacheAt(alice, "orphan")).replace(/\.bin$/, ".meta.json"))).toBe(false);
    expect((await store.usage()).count).toBe(4);
    await store.close();
    expect(await scopedUserFilesLost(root)).toEqual([]);

    // verify --fix: a damaged scoped cache is removed with its manifest and lock file and its
    // emptied key and model directories; the copies and the user's .bin are foreign, left alone.
    const damaged = path.join(root, cacheAt(alice, "damaged"));
    await fs.writeFile(damaged, "x".repeat((await fs.stat(damaged)).size));
    const verify = await kvkeep(["--root", root, "--json", "verify", "--fix"]);
    expect(verify.code, verify.stderr).toBe(0);
    const checked = json<{ results: Array<{ scopeId: string | null; cachePath: string; status: string }>; removedFiles: number }>(verify);
    const byStatus = (status: string): string[] => checked.results.filter((r) => r.status === status).map((r) => path.relative(root, r.cachePath)).sort();
    expect(byStatus("ok")).toEqual([cacheAt(alice, "chat"), cacheAt(bob, "bobonly"), cacheAt(null, "chat")].sort());
    expect(byStatus("removed")).toEqual([cacheAt(alice, "damaged")]);
    expect(byStatus("foreign")).toEqual([...copies, `.scopes/${alice}/x/y/z.bin`].sort());
    expect(checked.removedFiles).toBeGreaterThanOrEqual(2);
    expect(existsSync(path.join(root, ".scopes", alice, "damaged"))).toBe(false);
    expect(await scopedUserFilesLost(root)).toEqual([]);

    // gc's plan and sweep: the three proven caches, by scope; nothing else.
    const gcArgs = ["gc", "--max-bytes", "0", "--max-idle", "0", "--evict-named"];
    const plan = await kvkeep(["--root", root, "--json", ...gcArgs, "--dry-run"]);
    expect(plan.code, plan.stderr).toBe(0);
    const planned = json<{ evicted: Array<{ scopeId: string | null; cacheKey: string }> }>(plan).evicted.map((e) => `${e.scopeId ?? "-"} ${e.cacheKey}`);
    expect(planned.sort()).toEqual([`- chat`, `${alice} chat`, `${bob} bobonly`].sort());
    const gc = await kvkeep(["--root", root, "--json", ...gcArgs]);
    expect(gc.code, gc.stderr).toBe(0);
    const swept = json<{ evicted: Array<{ scopeId: string | null; cacheKey: string }>; removedFiles: number }>(gc);
    expect(swept.evicted.map((e) => `${e.scopeId ?? "-"} ${e.cacheKey}`).sort()).toEqual(planned.sort());
    expect(swept.removedFiles).toBeGreaterThanOrEqual(6);
    expect(await allBins(root)).toEqual(userBins);
    // Bob's space held only kvkeep's files: emptied, it is pruned; .scopes/ holds the user's.
    expect(existsSync(path.join(root, ".scopes", bob))).toBe(false);
    expect(await scopedUserFilesLost(root)).toEqual([]);

    // rm --all: new scoped caches go (every scope's), the user's files and the copies stay.
    const again = openKvCacheStore({ root });
    await customTurn(again.createSession("qwen", { scope: ALICE }), "again", CONFIG, 2);
    await customTurn(again.createSession("qwen", { scope: BOB }), "again", CONFIG, 2);
    await again.close();
    const rm = await kvkeep(["--root", root, "--json", "rm", "--all", "--yes"]);
    expect(rm.code, rm.stderr).toBe(0);
    const removed = json<{ removed: Array<{ scopeId: string | null; cacheKey: string; caches: number }>; leftFiles: string[]; removedFiles: number }>(rm);
    expect(removed.removed.map((r) => `${r.scopeId} ${r.cacheKey} ${r.caches}`).sort()).toEqual([`${alice} again 1`, `${bob} again 1`].sort());
    expect(removed.removedFiles).toBeGreaterThanOrEqual(4);
    expect(removed.leftFiles.map((f) => path.relative(root, f))).toEqual(expect.arrayContaining([...copies, `.scopes/${alice}/x/y/z.bin`]));
    expect(await allBins(root)).toEqual(userBins);
    expect(await scopedUserFilesLost(root)).toEqual([]);

    // A store's delete({ all }) and its sweeps, too.
    const last = openKvCacheStore({ root, maxBytes: 0, maxIdleMs: 0, evictNamed: true });
    await customTurn(last.createSession("qwen", { scope: ALICE }), "last", CONFIG, 2);
    await last.sweep();
    await last.delete({ all: true });
    await last.close();
    expect(await allBins(root)).toEqual(userBins);
    expect(await scopedUserFilesLost(root)).toEqual([]);
    expect(existsSync(path.join(root, ".scopes"))).toBe(true);
  });

  it("a directory holding a .scopes/ folder is still no root without the marker: refused, nothing touched, until adopted", async () => {
    const root = tempDir("kvkeep-scoped-");
    const made = openKvCacheStore({ root });
    await customTurn(made.createSession("qwen", { scope: ALICE }), "chat", CONFIG, 2);
    await made.close();
    await fs.rm(path.join(root, ".kvkeep"), { recursive: true });
    await plantScopedUserFiles(root);
    const before = await snapshot(root);
    for (const args of [["verify", "--fix"], ["gc", "--max-bytes", "0", "--max-idle", "0", "--evict-named"], ["rm", "--all", "--yes"], ["rm", "chat", "--scope", ALICE]]) {
      const run = await kvkeep(["--root", root, "--json", ...args]);
      expect(run.code, `${args.join(" ")}: ${run.stderr}`).toBe(1);
      expect(jsonError(run).code).toBe("ROOT_NOT_KVKEEP");
    }
    expect(() => openKvCacheStore({ root })).toThrow(expect.objectContaining({ code: "ROOT_NOT_KVKEEP" }));
    expect(await snapshot(root)).toEqual(before);
    // Adopted, its scoped cache is kvkeep's again (its manifest names its scope and place).
    const adopted = openKvCacheStore({ root, adopt: true });
    expect((await adopted.usage()).count).toBe(1);
    await adopted.close();
    const rm = await kvkeep(["--root", root, "--json", "rm", "chat", "--scope", ALICE]);
    expect(rm.code, rm.stderr).toBe(0);
    expect(json(rm).removed).toEqual([expect.objectContaining({ scopeId: alice, cacheKey: "chat", caches: 1 })]);
    expect(await scopedUserFilesLost(root)).toEqual([]);
  });
});
