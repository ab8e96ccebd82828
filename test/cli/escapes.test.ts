/**
 * Issue 20, item 6: session names are chosen by clients (`kv_cache`, `X-KV-Cache` on
 * `kvkeep serve`), so `kvkeep scan`/`rm`/`gc` print them with their control characters
 * escaped: no terminal escape runs, no fake row appears. The real built CLI on a real root.
 */
import { describe, expect, it } from "vitest";
import { openKvCacheStore } from "../../src/index.js";
import { escapeControls } from "../../src/cli/format.js";
import { customTurn } from "../helpers/fake-engine.js";
import { tempDir } from "../helpers/temp-root.js";
import { CONFIG, kvkeep } from "./helpers.js";

/** Anything a terminal would act on rather than show. */
const RAW_CONTROL = /[\u0000-\u0009\u000b-\u001f\u007f-\u009f\u2028\u2029\u202a-\u202e\u2066-\u2069]/;

const EVIL = [
  "\u001b[2J\u001b[Hpwned", // clear the screen, cursor home
  "chat-1\nchat-9                m  0000000000000000  1 KiB  99  just now", // a fake row
  "title\u001b]0;owned\u0007", // set the terminal's title
  "csi\u009b31mred", // a C1 CSI
  "rtl\u202egnp.exe", // a right-to-left override
  "cr\rover",
];

describe("client-chosen session names in CLI output (issue 20, item 6)", () => {
  it("scan, rm, rm --all --dry-run and gc print them escaped: no control character reaches the terminal, no fake row", async () => {
    const root = tempDir();
    const store = openKvCacheStore({ root });
    for (const key of [...EVIL, "plain"]) await customTurn(store.createSession("m"), key, CONFIG, 2);
    await store.close();

    const scan = await kvkeep(["--root", root, "scan"]);
    expect(scan.code, scan.stderr).toBe(0);
    expect(scan.stdout).not.toMatch(RAW_CONTROL);
    // Header, one row per cache, a blank line, the summary: nothing more.
    expect(scan.stdout.trimEnd().split("\n")).toHaveLength(1 + EVIL.length + 1 + 2);
    expect(scan.stdout).toContain("\\x1b[2J\\x1b[Hpwned");
    expect(scan.stdout).toContain("chat-1\\x0achat-9");
    expect(scan.stdout).toContain("csi\\x9b31mred");
    expect(scan.stdout).toContain("rtl\\u202egnp.exe");

    const dry = await kvkeep(["--root", root, "rm", "--all", "--dry-run"]);
    expect(dry.stdout).not.toMatch(RAW_CONTROL);
    expect(dry.stdout.trimEnd().split("\n")).toHaveLength(1 + EVIL.length + 1 + 1);

    // A key that is absent: its name in the error line is escaped too.
    const missing = await kvkeep(["--root", root, "rm", "nope\u001b[31m\nkvkeep: all good"]);
    expect(missing.code).toBe(1);
    expect(missing.stderr).not.toMatch(RAW_CONTROL);
    expect(missing.stderr.trimEnd().split("\n")).toHaveLength(1);

    const rm = await kvkeep(["--root", root, "rm", ...EVIL.slice(0, 3)]);
    expect(rm.code, rm.stderr).toBe(0);
    expect(rm.stdout).not.toMatch(RAW_CONTROL);
    expect(rm.stdout.trimEnd().split("\n")).toHaveLength(1 + 3 + 2);

    const gc = await kvkeep(["--root", root, "gc", "--max-bytes", "0", "--max-idle", "0", "--evict-named"]);
    expect(gc.code, gc.stderr).toBe(0);
    expect(gc.stdout + gc.stderr).not.toMatch(RAW_CONTROL);
    expect(gc.stdout.trimEnd().split("\n")).toHaveLength(1 + (EVIL.length - 3 + 1) + 2);
  });

  it("escapeControls shows each control character as a visible escape and leaves other text alone", () => {
    expect(escapeControls("a\u001bb\nc\u009bd\u202ee\u0000")).toBe("a\\x1bb\\x0ac\\x9bd\\u202ee\\x00");
    expect(escapeControls("héllo wörld — 日本語 ✓")).toBe("héllo wörld — 日本語 ✓");
  });
});
