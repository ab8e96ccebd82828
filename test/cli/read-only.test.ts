/**
 * The CLI on a read-only root (a real tmpfs remounted read-only): what only reads reports,
 * what must remove says so and exits 1, and nothing is changed. Skipped, with the reason
 * printed, where a tmpfs cannot be mounted.
 */
import path from "node:path";
import { afterEach, describe, expect, it } from "vitest";
import { listTree } from "../helpers/fake-engine.js";
import { mountTmpfs, type Tmpfs } from "../helpers/read-only.js";
import { cacheFiles, json, jsonError, kvkeep, rootWith } from "./helpers.js";

let mounted: Tmpfs | null = null;
afterEach(() => {
  mounted?.unmount();
  mounted = null;
});

function tmpfsOrSkip(ctx: { skip: (note?: string) => void }): Tmpfs | null {
  const result = mountTmpfs();
  if ("skip" in result) {
    console.warn(`SKIPPED: ${result.skip}`);
    ctx.skip(result.skip);
    return null;
  }
  mounted = result;
  return result;
}

describe("kvkeep on a read-only root", () => {
  it("usage, scan and verify report; verify --fix, gc and rm exit 1 with one line; nothing changes", async (ctx) => {
    const fsys = tmpfsOrSkip(ctx);
    if (!fsys) return;
    const root = await rootWith({ "chat-2": { qwen: 4 }, "chat-3": { qwen: 2 } }, { root: path.join(fsys.dir, "root"), auto: 1 });
    fsys.setReadOnly(true);
    const before = await listTree(root, { internal: true });

    expect(json(await kvkeep(["usage", "--root", root, "--json"]))).toMatchObject({ count: 3 });
    expect((await kvkeep(["scan", "--root", root])).code).toBe(0);
    const verify = await kvkeep(["verify", "--root", root]);
    expect(verify.code).toBe(0);
    expect(verify.stdout).toMatch(/3 caches .* 3 ok \(read-only root: checked without locks\)/);
    const fix = await kvkeep(["verify", "--fix", "--root", root, "--json"]);
    expect(fix.code).toBe(0);
    expect(json(fix)).toMatchObject({ readOnly: true });

    for (const args of [["gc", "--max-bytes", "0"], ["rm", "chat-2"], ["rm", "--all", "--yes"]]) {
      const run = await kvkeep([...args, "--root", root]);
      expect(run.code, args.join(" ")).toBe(1);
      expect(run.stderr).toMatch(/^kvkeep (gc|rm): cannot (evict|remove) caches: the cache root .* is read-only \(EROFS\); nothing was removed\.\n$/);
    }
    expect(jsonError(await kvkeep(["gc", "--root", root, "--json"]))).toMatchObject({ code: "ROOT_READ_ONLY", exitCode: 1 });
    // Dry runs only read: they still answer.
    expect(json(await kvkeep(["gc", "--max-bytes", "0", "--dry-run", "--root", root, "--json"])).evicted).toHaveLength(1);
    expect(await listTree(root, { internal: true })).toEqual(before);
  });

  it("gc exits 1 when an eviction fails (one read-only cache directory), after evicting the others", async (ctx) => {
    const fsys = tmpfsOrSkip(ctx);
    if (!fsys) return;
    const root = await rootWith({}, { root: path.join(fsys.dir, "root"), auto: 3 });
    const [stuck] = await cacheFiles(root);
    fsys.bindReadOnly(path.join(root, stuck!.split("/")[0]!));
    const run = await kvkeep(["gc", "--max-bytes", "0", "--root", root]);
    expect(run.code).toBe(1);
    expect(run.stdout).toMatch(/^evicted 2 caches/m);
    expect(run.stderr).toMatch(/could not evict a cache/);
    expect(run.stderr).toMatch(/^kvkeep gc: finished with 1 problem, the first: kvkeep: retention could not evict/m);
    expect(await cacheFiles(root)).toEqual([stuck]);
  });
});
