#!/usr/bin/env node
/**
 * npm's `prepare` hook: build dist/ (scripts/build.mjs: tsup, then the Bare build, made aside
 * and swapped in), unless nothing changed since the last build. It runs on `npm install` in a checkout, on
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
// Only when a source changed: an app that installed this checkout by its path runs this
// hook at each of its own `npm install`s. The build is made aside and swapped in whole.
const result = spawnSync(process.execPath, [path.join(root, "scripts", "build.mjs"), "--if-changed"], { cwd: root, stdio: "inherit" });
process.exitCode = result.status ?? 1;
