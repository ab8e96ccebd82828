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

/** An app with kvkeep's dist/ in its node_modules, with no prebuilds/ and no local build; the app's directory. */
async function packageWithoutAddon(): Promise<string> {
  const app = tempDir("kvkeep-noaddon-");
  await fs.writeFile(path.join(app, "package.json"), JSON.stringify({ name: "app", private: true, type: "module" }));
  const pkg = path.join(app, "node_modules", "kvkeep");
  await fs.mkdir(pkg, { recursive: true });
  await fs.copyFile(path.join(repoRoot, "package.json"), path.join(pkg, "package.json"));
  await fs.cp(path.join(repoRoot, "dist"), path.join(pkg, "dist"), { recursive: true });
  await fs.symlink(path.join(repoRoot, "node_modules"), path.join(pkg, "node_modules"));
  return app;
}

const SCRIPT = `
import { openKvCacheStore } from "kvkeep";
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
    // A command that builds from the app's directory (npm rebuild kvkeep does not: npm 11 skips
    // unapproved install scripts, and without the tools the hook only prints a notice)
    expect(plain.stderr).toContain("`npm install --save-dev cmake-js node-addon-api && node node_modules/kvkeep/scripts/install.mjs --build`");
    expect(plain.stderr).not.toContain("npm rebuild");

    expect(run(pkg, ["--disable-warning=KVKEEP_NATIVE_FALLBACK"]).stderr).toBe("");
    expect(run(pkg, [], { KVKEEP_NO_NATIVE: "1" }).stderr).toBe("");
  });
});

describe("the command the warning gives", () => {
  it("in an app: the build tools, then kvkeep's install script with --build, as typed in the app's directory; in a checkout: npm run build:native", async () => {
    const { addonBuildCommand } = await import("../../src/native/index.js");
    expect(addonBuildCommand("/srv/app/node_modules/kvkeep", "/srv/app")).toBe(
      "npm install --save-dev cmake-js node-addon-api && node node_modules/kvkeep/scripts/install.mjs --build",
    );
    expect(addonBuildCommand("/srv/app/node_modules/kvkeep", "/elsewhere")).toBe(
      "npm install --save-dev cmake-js node-addon-api && node /srv/app/node_modules/kvkeep/scripts/install.mjs --build",
    );
    expect(addonBuildCommand("/home/me/kvkeep", "/home/me/kvkeep")).toBe("npm run build:native");
    expect(addonBuildCommand("/home/me/kvkeep", "/home/me/app")).toBe("cd /home/me/kvkeep && npm run build:native");
  });
});
