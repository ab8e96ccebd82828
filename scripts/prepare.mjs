#!/usr/bin/env node
/**
 * npm's `prepare` hook: build dist/ (`npm run build`: tsup, then the Bare build). It runs on `npm install` in a checkout, on
 * `npm pack`, and — what it is for — when kvkeep is installed from git
 * (`npm install github:…` / `git+https://…`), where npm installs the dev dependencies in
 * its clone, runs this, and packs the result: without it such an install has no dist/.
 * It does not run for a tarball or registry install (dist/ is in the tarball).
 * Without tsup (dev dependencies omitted) it says so instead of failing the install.
 */
import { spawnSync } from "node:child_process";
import { createRequire } from "node:module";
import path from "node:path";
import { fileURLToPath } from "node:url";

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..");
try {
  createRequire(path.join(root, "package.json")).resolve("tsup/package.json");
} catch {
  console.log("kvkeep: tsup is not installed (dev dependencies omitted?), so dist/ was not built; run `npm install` with dev dependencies, then `npm run build`.");
  process.exit(0);
}
// The npm running this hook (npm_execpath), so a git install uses the same npm.
const npm = process.env.npm_execpath;
const result = npm
  ? spawnSync(process.execPath, [npm, "run", "build"], { cwd: root, stdio: "inherit" })
  : spawnSync("npm", ["run", "build"], { cwd: root, stdio: "inherit", shell: process.platform === "win32" });
process.exitCode = result.status ?? 1;
