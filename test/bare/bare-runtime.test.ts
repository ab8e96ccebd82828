/**
 * kvkeep under the real Bare runtimes (every one test/bare/helpers.ts finds: the `bare`
 * package's and bare-runtime-linux-x64's), each the same tests: the
 * package imports through its `bare` export condition with the native backend, refuses bad
 * input exactly as under Node, and one cache root is shared safely by Node and Bare
 * processes — a commit from either is trusted by the other as is, and their locks exclude
 * each other.
 */
import { readFileSync, writeFileSync } from "node:fs";
import path from "node:path";
import { describe, expect, it } from "vitest";
import * as kvkeepNode from "../../src/index.js";
import { createFileSettingsStorage } from "../../src/warm/index.js";
import { tempDir } from "../helpers/temp-root.js";
import { bareRuntimes, barePackage, jsonLines, onBare, repoRoot } from "./helpers.js";
// @ts-expect-error plain ESM shared with the Bare worker (no types)
import { BAD_INPUT_CASES } from "./fixtures/bad-input-cases.mjs";

const manifestOf = (cachePath: string): string => readFileSync(cachePath.replace(/\.bin$/, ".meta.json"), "utf8");

describe.each(bareRuntimes())("kvkeep on Bare $version (from $from)", (runtime) => {
  const { runBare, startBare } = onBare(runtime);

  it("imports through the bare export condition and runs a turn on the native backend", async () => {
    const root = tempDir();
    const { status, lines, stderr } = await runBare("store-worker.mjs", {
      root,
      steps: [{ key: "chat", write: "state from bare", messageCount: 3 }],
    });
    expect(stderr).toBe("");
    expect(status).toBe(0);
    expect(lines[0]).toMatchObject({ step: "open" });
    expect(["local-build", "prebuilt"]).toContain(lines[0]!.backend);
    expect(lines[1]).toMatchObject({ step: "begun", primed: true, savedCount: 0 });
    expect(lines[2]).toMatchObject({ step: "committed" });
    expect(readFileSync(path.join(root, "chat", "m", "cfg0.bin"), "utf8")).toBe("state from bare");
  });

  it("refuses KVKEEP_NO_NATIVE=1 with NATIVE_UNAVAILABLE instead of running without cross-process locks", async () => {
    const root = tempDir();
    const refused = await runBare("no-native-worker.mjs", { root }, { env: { KVKEEP_NO_NATIVE: "1" } });
    expect(refused.status).toBe(0);
    expect(refused.lines).toEqual([{ code: "NATIVE_UNAVAILABLE", message: expect.stringMatching(/KVKEEP_NO_NATIVE is set, but under Bare kvkeep needs its native addon.*Unset KVKEEP_NO_NATIVE/) }]);
    // Without it, the same worker opens the store on the addon.
    const opened = await runBare("no-native-worker.mjs", { root }, { env: { KVKEEP_NO_NATIVE: "" } });
    expect(opened.lines).toEqual([{ backend: expect.stringMatching(/^(local-build|prebuilt)$/) }]);
  });

  it("imports on this Bare (the version check at import passes)", async () => {
    const self = await runBare("import-check.mjs", {});
    expect(self.lines[0]).toEqual({ imported: true, exports: "function" });
  });

  // The fixture pretends to be an older Bare by shadowing Bare.version, which Bare 1.31's
  // global allows; from 1.33 on the global is frozen, so the pretence runs on 1.31 only.
  it.runIf(runtime.version.startsWith("1.31."))("refuses, at import, a Bare older than the oldest tested one (RUNTIME_UNSUPPORTED, saying how to get a current one)", async () => {
    const older = await runBare("import-check.mjs", { version: "v1.30.2" });
    expect(older.status).toBe(0);
    expect(older.lines[0]).toMatchObject({ imported: false, code: "RUNTIME_UNSUPPORTED", name: "KvKeepError" });
    expect(String(older.lines[0]!.message)).toMatch(/needs Bare 1\.31\.0 or later, and this is Bare 1\.30\.2.*npm install bare/);
  });

  it("resolves no node: builtin at run time (Bare has none): the build maps every one", async () => {
    const dir = await barePackage();
    const bundleDir = path.join(dir, "node_modules", "kvkeep", "dist", "bare");
    const sources = readFileSync(path.join(bundleDir, "index.js"), "utf8") + readFileSync(path.join(bundleDir, "engines", "qvac", "index.js"), "utf8");
    expect(sources).not.toMatch(/from\s*["']node:/);
    expect(sources).not.toMatch(/from\s*["'](fs|path|os|crypto|module|url)["']/);
  });

  it("refuses bad input with the same error codes and arguments as under Node", async () => {
    const root = tempDir();
    const nodeResults: unknown[] = [];
    let n = 0;
    for (const [name, run] of Object.entries(BAD_INPUT_CASES as Record<string, (k: unknown, root: string) => unknown>)) {
      try {
        await run(kvkeepNode, path.join(root, `node-${n++}`));
        nodeResults.push({ name, thrown: false });
      } catch (error) {
        const e = error as kvkeepNode.KvKeepError;
        nodeResults.push({ name, thrown: true, kvkeep: e instanceof kvkeepNode.KvKeepError, code: e.code ?? null, argument: e.argument ?? null });
      }
    }
    expect(nodeResults.filter((r) => !(r as { thrown: boolean }).thrown || !(r as { kvkeep: boolean }).kvkeep)).toEqual([]);
    const bare = await runBare("bad-input-worker.mjs", { root: path.join(root, "bare") });
    expect(bare.status).toBe(0);
    expect(bare.lines).toEqual(nodeResults);
  });

  it("shares one root with Node: each side trusts the other's commit as is (same identity, manifest untouched)", async () => {
    const root = tempDir();
    // Node commits; Bare resumes it.
    const node = kvkeepNode.openKvCacheStore({ root, onRollback: "keep-committed" });
    const session = node.createSession("m", { fingerprint: "fp" });
    const turn = await session.beginTurn({ kind: "custom", customKey: "from-node", configHash: "cfg0", primeIfMissing: async (p) => writeFileSync(p, "primed") });
    writeFileSync(turn.savePath, "state from node");
    await session.commitTurn(turn, { kind: "static", messageCount: 3 });
    const nodeManifest = manifestOf(turn.cachePath);

    const bare = await runBare("store-worker.mjs", {
      root,
      steps: [{ key: "from-node" }, { key: "from-bare", write: "state from bare", messageCount: 5 }],
    });
    expect(bare.status).toBe(0);
    expect(bare.lines[1]).toMatchObject({ step: "begun", key: "from-node", primed: false, savedCount: 3 });
    expect(bare.lines[2]).toMatchObject({ step: "rolledBack" });
    // Trusted by identity: a mismatch would have been re-verified by checksum and re-anchored.
    expect(manifestOf(turn.cachePath)).toBe(nodeManifest);

    // Bare's commit, resumed by Node (a fresh store: nothing known in memory).
    const bareCache = path.join(root, "from-bare", "m", "cfg0.bin");
    const bareManifest = manifestOf(bareCache);
    const node2 = kvkeepNode.openKvCacheStore({ root, onRollback: "keep-committed" });
    const t2 = await node2.createSession("m", { fingerprint: "fp" }).beginTurn({
      kind: "custom",
      customKey: "from-bare",
      configHash: "cfg0",
      primeIfMissing: async () => {
        throw new Error("Bare's commit should have been trusted, not re-primed");
      },
    });
    expect(t2.primed).toBe(false);
    expect(t2.savedCount).toBe(5);
    expect(readFileSync(t2.cachePath, "utf8")).toBe("state from bare");
    await node2.createSession("m", { fingerprint: "fp" }).rollback(t2);
    expect(manifestOf(bareCache)).toBe(bareManifest);
    await Promise.all([node.close(), node2.close()]);
  });

  it("shares warm settings with Node: the same files (SHA-256 names), read and written both ways", async () => {
    const dir = path.join(tempDir(), "warm");
    const node = createFileSettingsStorage(dir);
    await node.set("chat ✓ ünï", '{"enabled":false,"intervalMs":5000}');
    const bare = await runBare("store-worker.mjs", {
      root: tempDir(),
      steps: [{ settings: { dir, read: ["chat ✓ ünï", "missing"], write: { "from bare": '{"enabled":true,"intervalMs":1000}' } } }],
    });
    expect(bare.status).toBe(0);
    expect(bare.lines[1]).toEqual({
      step: "settings",
      read: { "chat ✓ ünï": '{"enabled":false,"intervalMs":5000}', missing: null },
      keys: ["chat ✓ ünï", "from bare"].sort(),
    });
    expect(await node.get("from bare")).toBe('{"enabled":true,"intervalMs":1000}');
  });

  it("excludes Node turns while a Bare turn holds the cache, and Bare turns while Node holds it", async () => {
    const root = tempDir();
    const release = path.join(root, "release-bare");
    // Bare holds "k" until told to commit.
    const holder = await startBare("store-worker.mjs", { root, steps: [{ key: "k", write: "by bare", messageCount: 7, holdUntil: release }] });
    await holder.waitForLine((l) => l.includes('"begun"'));
    const node = kvkeepNode.openKvCacheStore({ root, onRollback: "keep-committed" });
    const session = node.createSession("m", { fingerprint: "fp" });
    const begin = (signal?: AbortSignal) =>
      session.beginTurn({ kind: "custom", customKey: "k", configHash: "cfg0", signal, primeIfMissing: async (p) => writeFileSync(p, "by node") });
    await expect(begin(AbortSignal.timeout(300))).rejects.toMatchObject({ code: "ABORTED" });
    writeFileSync(release, "");
    expect(await holder.exited).toBe(0);
    const turn = await begin();
    expect(turn.savedCount).toBe(7); // waited for Bare's commit, then saw it

    // Now Node holds "k": a Bare turn waits, and gives up when its signal aborts.
    const waiter = await runBare("store-worker.mjs", { root, steps: [{ key: "k", waitMs: 300 }] });
    expect(jsonLines(waiter.stdout)[1]).toMatchObject({ step: "error", code: "ABORTED" });
    writeFileSync(turn.savePath, "by node again");
    await session.commitTurn(turn, { kind: "static", messageCount: 9 });
    const after = await runBare("store-worker.mjs", { root, steps: [{ key: "k" }] });
    expect(after.lines[1]).toMatchObject({ step: "begun", savedCount: 9, primed: false });
    await node.close();
  });
});

// Referenced so the content hash of the package includes the repo's package.json.
void repoRoot;
