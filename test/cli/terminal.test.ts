/**
 * What the CLI does on a real terminal (a pseudo-terminal from util-linux `script`): the
 * confirmation `rm --all` asks for, the progress bar of `verify`, the budget bar of `scan`.
 */
import { execFileSync } from "node:child_process";
import { describe, expect, it } from "vitest";
import { cacheFiles, kvkeepOnTerminal, rootWith } from "./helpers.js";

const hasScript = (() => {
  try {
    execFileSync("script", ["--version"], { stdio: "pipe" });
    return true;
  } catch {
    return false;
  }
})();

describe.skipIf(!hasScript)("kvkeep on a terminal", () => {
  it("rm --all asks first: 'n' (or nothing) removes nothing, 'y' removes everything", async () => {
    const root = await rootWith({ "chat-2": { qwen: 4 }, "chat-3": { qwen: 2 } });
    const no = await kvkeepOnTerminal(["rm", "--all", "--root", root], "n\n");
    expect(no.screen).toMatch(/Remove all 2 caches \(.+\) under .+\? \[y\/N\]/);
    expect(no.screen).toMatch(/not confirmed; nothing was removed/);
    expect(no.code).toBe(1);
    expect(await cacheFiles(root)).toHaveLength(2);

    const empty = await kvkeepOnTerminal(["rm", "--all", "--root", root], "\n");
    expect(empty.code).toBe(1);
    expect(await cacheFiles(root)).toHaveLength(2);

    const yes = await kvkeepOnTerminal(["rm", "--all", "--root", root], "y\n");
    expect(yes.code).toBe(0);
    expect(yes.screen).toMatch(/removed 2 caches/);
    expect(await cacheFiles(root)).toEqual([]);
  });

  it("verify draws a progress bar on the terminal, then a summary line; not with --json", async () => {
    const root = await rootWith({ "chat-2": { qwen: 4, llama: 3 } }, { auto: 3 });
    const run = await kvkeepOnTerminal(["verify", "--root", root]);
    expect(run.code).toBe(0);
    expect(run.screen).toMatch(/\rverifying \[[█·]+\] +\d+%/);
    // whole, up to its byte counts: `script`'s terminal reports 0 columns (COLUMNS=120 is the width)
    expect(run.screen).toMatch(/\rverifying \[█{24}\] 100% {2}5\/5, [\d.]+ (B|KiB|MiB) of [\d.]+ (B|KiB|MiB)\x1b\[K/);
    expect(run.screen).toMatch(/5 caches \(.+\) checked in .+: 5 ok/);
    const asJson = await kvkeepOnTerminal(["verify", "--root", root, "--json"]);
    expect(asJson.screen).not.toContain("verifying [");
    expect(JSON.parse(asJson.screen)).toMatchObject({ results: expect.any(Array) });
  });

  it("scan draws the budget bar, auto vs named, above the table", async () => {
    const root = await rootWith({ "chat-2": { qwen: 4 } }, { auto: 2, bytes: 300 * 1024 });
    const run = await kvkeepOnTerminal(["scan", "--root", root, "--max-bytes", "1M"]);
    expect(run.code).toBe(0);
    const lines = run.screen.split(/\r?\n/);
    // 2 × 300 KiB of auto caches against 1 MiB: ~59% of the 40 cells, then the small named cache.
    expect(lines[0]).toMatch(/^\[█{23,24}▒+·+\] .+ on disk, budget 1 MiB$/);
    expect(lines[1]).toMatch(/█ auto 600 KiB \(59% of the budget, evictable\) +▒ named .+ \(kept unless --evict-named\)/);
    expect(lines.findIndex((l) => l.startsWith("KEY"))).toBeGreaterThan(1);
  });
});
