/** The kvkeep CLI: the real built binary on real cache roots. */
import { spawnSync } from "node:child_process";
import { promises as fs, readFileSync } from "node:fs";
import path from "node:path";
import { describe, expect, it } from "vitest";
import { tempPathFor } from "../../src/layout/paths.js";
import { listTree } from "../helpers/fake-engine.js";
import { tempDir } from "../helpers/temp-root.js";
import { cacheFiles, json, jsonError, kvkeep, repoRoot, rootWith } from "./helpers.js";

const CHATS = { "chat-2": { qwen: 4, llama: 6 }, "chat-3": { qwen: 2 } };

describe("kvkeep scan and usage", () => {
  it("scan lists every cache with its model, size and message count; usage sums auto and named", async () => {
    const root = await rootWith(CHATS, { auto: 2 });
    const scan = await kvkeep(["--root", root, "--json", "scan"]);
    expect(scan.code).toBe(0);
    const caches = json<Array<{ cacheKey: string; modelId: string; kind: string; messageCount: number; problem: string | null; lastUsed: string }>>(scan);
    expect(caches.filter((c) => c.kind === "named").map((c) => [c.cacheKey, c.modelId, c.messageCount]).sort()).toEqual([
      ["chat-2", "llama", 6],
      ["chat-2", "qwen", 4],
      ["chat-3", "qwen", 2],
    ]);
    expect(caches.filter((c) => c.kind === "auto")).toHaveLength(2);
    expect(caches.every((c) => c.problem === null && !Number.isNaN(Date.parse(c.lastUsed)))).toBe(true);

    const usage = json((await kvkeep(["usage", "--root", root, "--json"])));
    expect(usage).toMatchObject({ root, count: 5, autoCount: 2, namedCount: 3 });
    expect(usage.autoBytes + usage.namedBytes).toBe(usage.bytes);
  });

  it("human output: aligned columns, sizes in sensible units, ages, singular and plural", async () => {
    const root = await rootWith({ "chat-3": { qwen: 2 } });
    const scan = await kvkeep(["scan", "--root", root]);
    const lines = scan.stdout.trimEnd().split("\n");
    expect(lines[0]).toMatch(/^KEY\s+MODEL\s+CONFIG\s+SIZE\s+MESSAGES\s+LAST USE$/);
    const row = lines[1]!;
    expect(row).toMatch(/^chat-3\s+qwen\s+[0-9a-f]{16}\s+\d+(\.\d+)? (B|KiB)\s+2\s+(just now|\d+ s ago)$/);
    // Columns line up: each header starts where its cells start.
    expect(row.indexOf("qwen")).toBe(lines[0]!.indexOf("MODEL"));
    expect(scan.stdout).toContain("1 cache,");
    expect(scan.stdout).not.toMatch(/MiB.*0\.00|0\.00 MiB/);
    // Piped: no budget bar.
    expect(scan.stdout).not.toContain("█");
    const usage = await kvkeep(["usage", "--root", root]);
    expect(usage.stdout).toMatch(/1 cache, \d/);
    expect(usage.stdout).toMatch(/auto\s+0 caches\s+0 B/);
  });

  it("usage and scan change nothing: a dead writer's temp file and an orphan manifest stay", async () => {
    const root = await rootWith({ "chat-2": { qwen: 4 } });
    const modelDir = path.join(root, "chat-2", "qwen");
    const dead = spawnSync(process.execPath, ["-e", ""]).pid!; // exited: its pid is free
    const temp = tempPathFor(path.join(modelDir, "deadbeef00000000.bin"), dead);
    await fs.writeFile(temp, "leftover of a crashed writer");
    await fs.writeFile(path.join(modelDir, "0123456789abcdef.meta.json"), "{}");
    const before = await listTree(root, { internal: true });
    expect((await kvkeep(["usage", "--root", root, "--json"])).code).toBe(0);
    expect(json(await kvkeep(["usage", "--root", root, "--json"]))).toMatchObject({ tempFiles: 1, tempBytes: 28 });
    expect((await kvkeep(["scan", "--root", root])).code).toBe(0);
    expect(await listTree(root, { internal: true })).toEqual(before);
  });
});

describe("kvkeep verify", () => {
  it("finds a damaged cache (exit 1); --fix removes it with its lock file and emptied directories", async () => {
    const root = await rootWith(CHATS);
    const damaged = path.join(root, "chat-3", "qwen", (await fs.readdir(path.join(root, "chat-3", "qwen"))).find((f) => f.endsWith(".bin"))!);
    const { size } = await fs.stat(damaged);
    await fs.writeFile(damaged, Buffer.alloc(size, 7));
    const check = await kvkeep(["verify", "--root", root]);
    expect(check.code).toBe(1);
    expect(check.stdout).toMatch(/^bad\s+chat-3\/qwen\/\S+\.bin\s+checksum/m);
    expect(check.stdout).toMatch(/3 caches \(.+\) checked in .+: 2 ok, 1 damaged$/m);

    const fix = await kvkeep(["verify", "--fix", "--root", root, "--json"]);
    expect(fix.code).toBe(0);
    expect(json(fix).results.map((r: { cacheKey: string; status: string }) => [r.cacheKey, r.status]).sort()).toEqual([
      ["chat-2", "ok"],
      ["chat-2", "ok"],
      ["chat-3", "removed"],
    ]);
    await expect(fs.stat(path.join(root, "chat-3"))).rejects.toMatchObject({ code: "ENOENT" }); // no empty directories left
    expect(await cacheFiles(root)).toHaveLength(2);
    expect((await kvkeep(["verify", "--root", root])).code).toBe(0);
  });

  it("a lock path that is a directory is that one cache's error; the others are still verified", async () => {
    const root = await rootWith(CHATS);
    const modelDir = path.join(root, "chat-3", "qwen");
    const bin = (await fs.readdir(modelDir)).find((f) => f.endsWith(".bin"))!;
    const lockPath = path.join(modelDir, bin.replace(/\.bin$/, ".lock"));
    await fs.rm(lockPath, { force: true });
    await fs.mkdir(lockPath);
    const run = await kvkeep(["verify", "--root", root, "--json"]);
    expect(run.code).toBe(1);
    const statuses = json(run).results.map((r: { cacheKey: string; status: string }) => [r.cacheKey, r.status]).sort();
    expect(statuses).toEqual([
      ["chat-2", "ok"],
      ["chat-2", "ok"],
      ["chat-3", "error"],
    ]);
    expect(run.stderr).toBe("");
  });

  it("on a copied root it verifies every cache without rewriting a manifest (last-use times survive)", async () => {
    const original = await rootWith(CHATS);
    const copy = path.join(tempDir("kvkeep-copy-"), "root");
    await fs.cp(original, copy, { recursive: true }); // new inodes and mtimes: identities no longer match
    const manifests = async (): Promise<Array<[string, string, number]>> => {
      const out: Array<[string, string, number]> = [];
      for (const file of await listTree(copy)) {
        if (!file.endsWith(".meta.json")) continue;
        const full = path.join(copy, file);
        out.push([file, await fs.readFile(full, "utf8"), (await fs.stat(full)).mtimeMs]);
      }
      return out;
    };
    const before = await manifests();
    expect(before).toHaveLength(3);
    const run = await kvkeep(["verify", "--root", copy]);
    expect(run.code).toBe(0);
    expect(run.stdout).toMatch(/3 caches .* 3 ok/);
    expect(await manifests()).toEqual(before);
  });

  it("reports a cache a turn holds as busy without waiting, and prints no progress bar when piped", async () => {
    const root = await rootWith(CHATS);
    const { openKvCacheStore } = await import("../../src/index.js");
    const { CONFIG } = await import("./helpers.js");
    const store = openKvCacheStore({ root });
    const session = store.createSession("qwen");
    const turn = await session.beginTurn({ kind: "custom", customKey: "chat-3", configHash: CONFIG, primeIfMissing: async () => {} });
    try {
      const run = await kvkeep(["verify", "--root", root]);
      expect(run.code).toBe(0);
      expect(run.stdout).toMatch(/^busy\s+chat-3\/qwen\//m);
      expect(run.stdout).toMatch(/2 ok, 1 busy$/m);
      expect(run.stderr).toBe(""); // no progress bar, no \r, when stderr is a pipe
    } finally {
      await session.rollback(turn);
      await store.close();
    }
  });
});

describe("kvkeep rm", () => {
  it("removes several keys; --model limits it to one model; --dry-run removes nothing", async () => {
    const root = await rootWith({ ...CHATS, "chat-4": { qwen: 1 } });
    const dry = await kvkeep(["rm", "chat-2", "chat-3", "--dry-run", "--root", root]);
    expect(dry.code).toBe(0);
    expect(dry.stdout).toMatch(/would remove 3 caches .* of 2 keys/);
    expect(await cacheFiles(root)).toHaveLength(4);

    const one = await kvkeep(["rm", "chat-2", "--model", "llama", "--root", root]);
    expect(one.code).toBe(0);
    expect((await cacheFiles(root)).filter((f) => f.startsWith("chat-2/"))).toEqual([expect.stringMatching(/^chat-2\/qwen\//)]);

    const both = await kvkeep(["rm", "chat-2", "chat-3", "--root", root, "--json"]);
    expect(both.code).toBe(0);
    expect(json(both).removed.map((r: { cacheKey: string }) => r.cacheKey)).toEqual(["chat-2", "chat-3"]);
    expect(await cacheFiles(root)).toEqual([expect.stringMatching(/^chat-4\//)]);
  });

  it("a key with no caches exits 1 with one line; the keys that exist are still removed", async () => {
    const root = await rootWith(CHATS);
    const run = await kvkeep(["rm", "chat-3", "chat-9", "--root", root]);
    expect(run.code).toBe(1);
    expect(run.stderr.trim().split("\n")).toEqual([expect.stringMatching(/^kvkeep rm: no caches for "chat-9" under .*the other key was removed/)]);
    expect((await cacheFiles(root)).some((f) => f.startsWith("chat-3/"))).toBe(false);
    const missingModel = await kvkeep(["rm", "chat-2", "--model", "mistral", "--root", root, "--json"]);
    expect(missingModel.code).toBe(1);
    expect(jsonError(missingModel)).toMatchObject({ code: "NOT_FOUND", exitCode: 1 });
    expect(await cacheFiles(root)).toHaveLength(2);
    // Only absent keys: the error line alone (no empty result printed before it).
    const onlyMissing = await kvkeep(["rm", "chat-9", "--root", root]);
    expect(onlyMissing).toMatchObject({ code: 1, stdout: "" });
  });

  it("rm --all refuses without --yes when stdin is not a terminal, and removes everything with it", async () => {
    const root = await rootWith(CHATS, { auto: 1 });
    const refused = await kvkeep(["rm", "--all", "--root", root]);
    expect(refused.code).toBe(2);
    expect(refused.stderr).toMatch(/--all would remove 4 caches .* pass --yes/);
    expect(await cacheFiles(root)).toHaveLength(4);
    const yes = await kvkeep(["rm", "--all", "--yes", "--root", root]);
    expect(yes.code).toBe(0);
    expect(yes.stdout).toMatch(/removed 4 caches/);
    expect(await cacheFiles(root)).toEqual([]);
    expect((await kvkeep(["rm", "--all", "--root", root])).stdout).toMatch(/nothing to remove/);
  });

  it("rejects an unsafe key before touching anything (exit 2)", async () => {
    const root = await rootWith(CHATS);
    for (const key of ["../chat-2", "a/b", ".kvkeep"]) {
      const run = await kvkeep(["rm", "chat-2", key, "--root", root]);
      expect(run.code, key).toBe(2);
    }
    expect(await cacheFiles(root)).toHaveLength(3);
  });
});

describe("strict arguments: a typo never deletes", () => {
  // The commands of the issue that deleted data, and others like them.
  const cases: Array<[string[], RegExp]> = [
    [["rm", "chat-2", "--modle", "qwen"], /unknown option --modle \(did you mean --model\?\)/],
    [["--dry-run", "rm", "--all"], /--dry-run before the command; it is an option of gc and rm/],
    [["gc", "--max-byte", "1"], /unknown option --max-byte \(did you mean --max-bytes\?\)/],
    [["rm", "--all", "chat-2"], /--all takes no keys/],
    [["rm", "chat-2", "--all", "--model", "qwen"], /--all takes no keys|--model goes with keys/],
    [["rm", "--model"], /--model needs a value/],
    [["rm", "--yes=no", "chat-2"], /--yes takes no value/],
    [["gc", "--max-bytes", "lots"], /--max-bytes must be a size such as 512K, 5M, 2G/],
    [["gc", "--max-idle", "30"], /--max-idle must be a duration such as 30s, 15m, 1h or 7d/],
    [["gc", "--max-bytes", "-1"], /^kvkeep gc: --max-bytes cannot be negative \(got -1\)\. See kvkeep gc --help\.$/],
    [["scan", "--max-bytes", "-5M"], /--max-bytes cannot be negative \(got -5M\)/],
    [["rm", "--model", "--dry-run", "chat-2"], /--model needs a value, not the option --dry-run/],
    [["gc", "extra"], /unexpected argument "extra"/],
    [["scan", "--fix"], /unknown option --fix/],
    [["rm"], /at least one cache key, or --all/],
    [["remove", "chat-2"], /unknown command "remove"/],
    [["sacn"], /unknown command "sacn" \(did you mean "scan"\?\)/],
  ];
  it.each(cases)("kvkeep %j: exit 2, one line on stderr, nothing touched", async (args, message) => {
    const root = await rootWith(CHATS, { auto: 1 });
    const before = await listTree(root, { internal: true });
    const run = await kvkeep(["--root", root, ...args]);
    expect(run.code).toBe(2);
    expect(run.stdout).toBe("");
    const lines = run.stderr.trim().split("\n");
    expect(lines).toHaveLength(1);
    expect(lines[0]).toMatch(message);
    expect(await listTree(root, { internal: true })).toEqual(before);
  });

  it("with --json, a usage error is one JSON object on stderr", async () => {
    const run = await kvkeep(["--json", "rm", "chat-2", "--modle", "qwen"]);
    expect(run.code).toBe(2);
    expect(jsonError(run)).toMatchObject({ code: "USAGE", exitCode: 2, message: expect.stringContaining("--modle") });
  });

  it("global options go before or after the command", async () => {
    const root = await rootWith(CHATS);
    expect(json(await kvkeep(["scan", "--json", "--root", root]))).toHaveLength(3);
    expect(json(await kvkeep(["--json", "--root", root, "scan"]))).toHaveLength(3);
  });
});

describe("kvkeep gc", () => {
  it("takes sizes and durations with units; --dry-run says what it would evict and removes nothing", async () => {
    const root = await rootWith({ "chat-2": { qwen: 4 } }, { auto: 3, bytes: 600 * 1024 });
    const dry = await kvkeep(["gc", "--max-bytes", "1M", "--dry-run", "--root", root, "--json"]);
    expect(dry.code).toBe(0);
    const planned = json(dry);
    expect(planned).toMatchObject({ dryRun: true, maxBytes: 1024 * 1024 });
    expect(planned.evicted).toHaveLength(2); // 3 × 600 KiB down to 1 MiB: the two least recently used
    expect(await cacheFiles(root)).toHaveLength(4);
    const human = await kvkeep(["gc", "--max-bytes", "1M", "--dry-run", "--root", root]);
    expect(human.stdout).toMatch(/would evict 2 caches \(1\.17 MiB\); 600 KiB of evictable caches would stay, budget 1 MiB/);

    const run = await kvkeep(["gc", "--max-bytes", "1M", "--max-idle", "7d", "--root", root, "--json"]);
    expect(run.code).toBe(0);
    expect(json(run).evicted.map((e: { cacheKey: string }) => e.cacheKey)).toEqual(planned.evicted.map((e: { cacheKey: string }) => e.cacheKey));
    expect(await cacheFiles(root)).toHaveLength(2); // one auto cache and the named one

    // Named caches only with --evict-named.
    expect(json(await kvkeep(["gc", "--max-bytes", "0", "--root", root, "--json"])).evicted).toHaveLength(1);
    expect(await cacheFiles(root)).toEqual([expect.stringMatching(/^chat-2\//)]);
    expect(json(await kvkeep(["gc", "--max-bytes", "0", "--evict-named", "--root", root, "--json"])).evicted).toHaveLength(1);
    expect(await cacheFiles(root)).toEqual([]);
  });

  it("--max-idle evicts caches unused for that long", async () => {
    const root = await rootWith({}, { auto: 2 });
    const [first] = await cacheFiles(root);
    const old = (Date.now() - 2 * 3_600_000) / 1000;
    await fs.utimes(path.join(root, first!.replace(/\.bin$/, ".meta.json")), old, old); // last used 2 h ago
    const run = await kvkeep(["gc", "--max-idle", "1h", "--root", root, "--json"]);
    expect(json(run).evicted).toEqual([expect.objectContaining({ cacheKey: first!.split("/")[0], reason: "idle" })]);
  });
});

describe("exit codes and messages", () => {
  it("a root that does not exist yet (a fresh machine): the read-only commands say 0 caches and exit 0; the others exit 1; nothing is created", async () => {
    const dir = tempDir();
    const missing = path.join(dir, "nope");
    const note = `kvkeep: no cache root at ${missing} yet: nothing is cached there (the first turn that caches creates it; --root DIR or KVKEEP_DIR for another).\n`;
    const usage = await kvkeep(["usage", "--root", missing]);
    expect([usage.code, usage.stderr]).toEqual([0, note]);
    expect(usage.stdout).toMatch(/^.*nope: 0 caches, 0 B\n/);
    const scan = await kvkeep(["scan", "--root", missing]);
    expect([scan.code, scan.stdout, scan.stderr]).toEqual([0, `${missing}: no caches\n`, note]);
    const verify = await kvkeep(["verify", "--root", missing]);
    expect([verify.code, verify.stderr]).toEqual([0, note]);
    expect(verify.stdout).toMatch(/^0 caches \(0 B\) checked in .*: 0 ok\n$/);
    expect(json((await kvkeep(["scan", "--root", missing, "--json"])))).toEqual([]);
    expect(json(await kvkeep(["usage", "--root", missing, "--json"]))).toMatchObject({ rootExists: false, count: 0, bytes: 0 });
    expect(json(await kvkeep(["verify", "--root", missing, "--json"]))).toMatchObject({ results: [] });
    for (const args of [["gc"], ["verify", "--fix"], ["rm", "chat-2"]]) {
      const run = await kvkeep([...args, "--root", missing]);
      expect(run.code, args.join(" ")).toBe(1);
      expect(run.stderr).toBe(`kvkeep ${args[0]}: no cache root at ${missing}; pass --root DIR or set KVKEEP_DIR (nothing was changed).\n`);
    }
    await expect(fs.stat(missing)).rejects.toThrow(); // not created
    const file = path.join(dir, "file");
    await fs.writeFile(file, "x");
    const run = await kvkeep(["--json", "rm", "chat-2", "--root", file]);
    expect(run.code).toBe(1);
    expect(jsonError(run)).toMatchObject({ code: "ROOT_NOT_DIRECTORY", exitCode: 1 });
  });

  it("--help explains every command and option with examples; --version prints the version", async () => {
    const help = await kvkeep(["--help"]);
    expect(help.code).toBe(0);
    for (const command of ["usage", "scan", "verify", "gc", "rm", "backend", "serve"]) expect(help.stdout).toMatch(new RegExp(`^  ${command}\\s+\\S`, "m"));
    expect(help.stdout).toContain("Examples:");
    const rmHelp = await kvkeep(["rm", "--help"]);
    expect(rmHelp.code).toBe(0);
    for (const option of ["--model ID", "--all", "-y, --yes", "--dry-run", "--root DIR", "--json"]) expect(rmHelp.stdout).toContain(option);
    expect(rmHelp.stdout).toMatch(/kvkeep rm --all --dry-run/);
    expect((await kvkeep(["help", "gc"])).stdout).toContain("--max-idle DURATION");
    expect((await kvkeep(["gc", "-h", "--bogus"])).code).toBe(2); // unknown options are refused even next to --help
    const version = await kvkeep(["--version"]);
    expect(version.stdout.trim()).toBe(JSON.parse(readFileSync(path.join(repoRoot, "package.json"), "utf8")).version);
  });

  it("serve is a command of its own: its --help lists its flags, an unknown flag exits 2 and starts nothing", async () => {
    const help = await kvkeep(["serve", "--help"]);
    expect(help.code).toBe(0);
    for (const flag of ["--model", "--parallel", "--api-key", "--max-bytes"]) expect(help.stdout).toContain(flag);
    const root = tempDir();
    const bad = await kvkeep(["serve", "--model", "/nonexistent.gguf", "--root", root, "--parallell", "2"]);
    expect(bad.code).toBe(2);
    expect(bad.stderr).toContain("--parallell");
    expect(await listTree(root)).toEqual([]);
  });

  it("backend names the native backend", async () => {
    const backend = json(await kvkeep(["--json", "backend"]));
    expect(["prebuilt", "local-build", "js-fallback"]).toContain(backend.kind);
  });
});
