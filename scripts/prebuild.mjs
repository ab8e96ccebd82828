#!/usr/bin/env node
/**
 * Put the addon binaries a packed kvkeep ships into prebuilds/<platform>-<arch>/kvkeep.node,
 * where the loader looks first — so users need no compiler (npm does not run a dependency's
 * install script unless approved). Runs on `npm pack` / `npm publish` (prepack).
 *
 * - This platform: the newest local build (cmake-js or node-gyp); built with cmake-js first
 *   if there is none.
 * - linux-arm64, on a linux-x64 machine with Debian's cross compiler (g++-aarch64-linux-gnu):
 *   cross-built with cmake-js into build-linux-arm64/ when missing or older than the sources.
 *   Without the cross compiler it is left out, and this says so.
 *
 *   node scripts/prebuild.mjs               both, as above
 *   node scripts/prebuild.mjs --cross-only  only the cross build, not copied (npm run build:native:arm64)
 */
import { execFileSync, spawnSync } from "node:child_process";
import { copyFileSync, existsSync, mkdirSync, readdirSync, statSync } from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..");
const crossOnly = process.argv.includes("--cross-only");

function install(from, platformArch) {
  const target = path.join(root, "prebuilds", platformArch, "kvkeep.node");
  mkdirSync(path.dirname(target), { recursive: true });
  copyFileSync(from, target);
  console.log(`prebuilt: ${path.relative(root, from)} -> ${path.relative(root, target)}`);
}

function newestSource() {
  const dir = path.join(root, "native", "src");
  return Math.max(
    statSync(path.join(root, "native", "CMakeLists.txt")).mtimeMs,
    ...readdirSync(dir).map((f) => statSync(path.join(dir, f)).mtimeMs),
  );
}

function thisPlatform() {
  const builds = [path.join(root, "build-cmake", "Release", "kvkeep.node"), path.join(root, "build", "Release", "kvkeep.node")]
    .filter((p) => existsSync(p))
    .sort((a, b) => statSync(b).mtimeMs - statSync(a).mtimeMs);
  if (builds.length === 0) {
    execFileSync("npm", ["run", "build:native"], { cwd: root, stdio: "inherit" });
    builds.push(path.join(root, "build-cmake", "Release", "kvkeep.node"));
  }
  install(builds[0], `${process.platform}-${process.arch}`);
}

const CROSS = { platformArch: "linux-arm64", compiler: "aarch64-linux-gnu-g++", processor: "aarch64", out: "build-linux-arm64" };

function crossArm64() {
  if (process.platform !== "linux" || process.arch !== "x64") return;
  const hasCompiler = spawnSync(CROSS.compiler, ["--version"], { stdio: "ignore" }).status === 0;
  if (!hasCompiler) {
    console.log(`prebuilt: no ${CROSS.platformArch} binary (install Debian's g++-aarch64-linux-gnu to cross-build it)`);
    if (crossOnly) process.exitCode = 1;
    return;
  }
  const binary = path.join(root, CROSS.out, "Release", "kvkeep.node");
  if (!existsSync(binary) || statSync(binary).mtimeMs < newestSource()) {
    const cmakeJs = path.join(root, "node_modules", "cmake-js", "bin", "cmake-js");
    execFileSync(
      process.execPath,
      [
        cmakeJs,
        "compile",
        "--directory",
        path.join(root, "native"),
        "--out",
        path.join(root, CROSS.out),
        "--arch",
        "arm64",
        "--CDCMAKE_SYSTEM_NAME=Linux",
        `--CDCMAKE_SYSTEM_PROCESSOR=${CROSS.processor}`,
        `--CDCMAKE_CXX_COMPILER=${CROSS.compiler}`,
      ],
      { cwd: root, stdio: "inherit" },
    );
  }
  if (crossOnly) console.log(`built: ${path.relative(root, binary)}`);
  else install(binary, CROSS.platformArch);
}

if (!crossOnly) thisPlatform();
crossArm64();
