#!/usr/bin/env node
/**
 * npm's `prepare` hook: build dist/ (tsup). It runs on `npm install` in a checkout, on
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
let tsup;
try {
  const require = createRequire(path.join(root, "package.json"));
  const pkgPath = require.resolve("tsup/package.json");
  tsup = path.join(path.dirname(pkgPath), require(pkgPath).bin.tsup);
} catch {
  console.log("kvkeep: tsup is not installed (dev dependencies omitted?), so dist/ was not built; run `npm install` with dev dependencies, then `npm run build`.");
  process.exit(0);
}
const result = spawnSync(process.execPath, [tsup], { cwd: root, stdio: "inherit" });
process.exitCode = result.status ?? 1;
