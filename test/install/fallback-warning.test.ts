/**
 * Where no native addon loads (a platform without a prebuilt, no compiler), kvkeep says so
 * once on stderr through Node's warning channel, with a code users can filter — loggers
 * are silent by default, and losing cross-process locks must not go unnoticed.
 * Runs the built package in a child process from a copy that has no addon at all.
 */
import { spawnSync } from "node:child_process";
import { promises as fs } from "node:fs";
import path from "node:path";
import { describe, expect, it } from "vitest";
import { tempDir } from "../helpers/temp-root.js";
import { repoRoot } from "../cli/helpers.js";

/** kvkeep's dist/ in a package of its own, with no prebuilds/ and no local build. */
async function packageWithoutAddon(): Promise<string> {
  const pkg = path.join(tempDir("kvkeep-noaddon-"), "kvkeep");
  await fs.mkdir(pkg);
  await fs.copyFile(path.join(repoRoot, "package.json"), path.join(pkg, "package.json"));
  await fs.cp(path.join(repoRoot, "dist"), path.join(pkg, "dist"), { recursive: true });
  await fs.symlink(path.join(repoRoot, "node_modules"), path.join(pkg, "node_modules"));
  return pkg;
}

const SCRIPT = `
import { openKvCacheStore } from "./dist/index.js";
import os from "node:os";
import fs from "node:fs";
import path from "node:path";
for (let i = 0; i < 2; i++) {
  const store = openKvCacheStore({ root: fs.mkdtempSync(path.join(os.tmpdir(), "kvkeep-warn-")) });
  await store.close();
  fs.rmSync(store.root, { recursive: true, force: true });
  console.log(store.backend);
}
`;

function run(pkg: string, nodeArgs: string[], env: NodeJS.ProcessEnv = {}): { stdout: string; stderr: string } {
  const base = { ...process.env };
  delete base.KVKEEP_NO_NATIVE;
  const result = spawnSync(process.execPath, [...nodeArgs, "--input-type=module", "-e", SCRIPT], { cwd: pkg, env: { ...base, ...env }, encoding: "utf8", timeout: 30_000 });
  expect(result.status, result.stderr).toBe(0);
  return { stdout: result.stdout, stderr: result.stderr };
}

describe("no native backend", () => {
  it("warns once on stderr with code KVKEEP_NATIVE_FALLBACK; --disable-warning and KVKEEP_NO_NATIVE=1 silence it", async () => {
    const pkg = await packageWithoutAddon();
    const plain = run(pkg, []);
    expect(plain.stdout).toBe("js-fallback\njs-fallback\n");
    expect(plain.stderr.match(/\[KVKEEP_NATIVE_FALLBACK\] KvKeepWarning: /g)).toHaveLength(1);
    expect(plain.stderr).toMatch(/locks do not exclude other processes/);
    expect(plain.stderr).toMatch(/npm rebuild kvkeep/);

    expect(run(pkg, ["--disable-warning=KVKEEP_NATIVE_FALLBACK"]).stderr).toBe("");
    expect(run(pkg, [], { KVKEEP_NO_NATIVE: "1" }).stderr).toBe("");
  });
});
