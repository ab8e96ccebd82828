#!/usr/bin/env node
/**
 * Copy the locally built addon to prebuilds/<platform>-<arch>/kvkeep.node, where the loader
 * looks first — so a packed kvkeep ships a binary for this platform and its users need no
 * compiler (npm does not run a dependency's install script unless approved). Runs on
 * `npm pack` / `npm publish` (prepack). Builds with cmake-js first if nothing is built.
 */
import { execFileSync } from "node:child_process";
import { copyFileSync, existsSync, mkdirSync, statSync } from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..");
const builds = [path.join(root, "build-cmake", "Release", "kvkeep.node"), path.join(root, "build", "Release", "kvkeep.node")]
  .filter((p) => existsSync(p))
  .sort((a, b) => statSync(b).mtimeMs - statSync(a).mtimeMs);
if (builds.length === 0) {
  execFileSync("npm", ["run", "build:native"], { cwd: root, stdio: "inherit" });
  builds.push(path.join(root, "build-cmake", "Release", "kvkeep.node"));
}
const target = path.join(root, "prebuilds", `${process.platform}-${process.arch}`, "kvkeep.node");
mkdirSync(path.dirname(target), { recursive: true });
copyFileSync(builds[0], target);
console.log(`prebuilt: ${path.relative(root, builds[0])} -> ${path.relative(root, target)}`);
