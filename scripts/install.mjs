#!/usr/bin/env node
// kvkeep's native build driver. Plain ESM with no dependencies: it runs before anything
// is built, and in a user's install where only kvkeep's runtime dependencies exist.
//
//   node scripts/install.mjs             the package's `install` hook:
//       prebuilt binary for this platform → nothing to do;
//       else cmake-js (and node-addon-api) resolvable → build with cmake-js;
//       else say in one line that the pure-JS fallback will be used.
//     It never fails the install: a failed build prints its error and exits 0, because
//     kvkeep works without the addon (minus cross-process locking) and says so at runtime.
//
//   node scripts/install.mjs --build     build the addon now, as the fallback warning says
//     (`npm rebuild kvkeep` does not: npm 11 skips unapproved dependencies' install scripts
//     and still reports success). Exits 1, saying why, when it cannot.
//
//   node scripts/install.mjs --node-gyp  `npm run build:native:gyp`: node-gyp rebuild,
//     offline when the running Node's own headers are installed (see nodeGypArgs). Exits
//     with node-gyp's status: this one is a developer/CI command, failures must show.
import { spawnSync } from "node:child_process";
import { existsSync, readFileSync } from "node:fs";
import { createRequire } from "node:module";
import path from "node:path";
import { fileURLToPath } from "node:url";

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..");
const require = createRequire(path.join(root, "package.json"));
const prefix = "kvkeep:";

/** Keep in sync with src/native/paths.ts (the loader's candidates). */
const prebuiltPath = path.join(root, "prebuilds", `${process.platform}-${process.arch}`, "kvkeep.node");
const cmakeOutDir = "build-cmake";

function resolveBin(pkg, binName) {
  try {
    const pkgJsonPath = require.resolve(`${pkg}/package.json`);
    const pkgJson = JSON.parse(readFileSync(pkgJsonPath, "utf8"));
    const bin = typeof pkgJson.bin === "string" ? pkgJson.bin : pkgJson.bin?.[binName];
    return bin ? path.join(path.dirname(pkgJsonPath), bin) : null;
  } catch {
    return null;
  }
}

function resolvable(pkg) {
  try {
    require.resolve(`${pkg}/package.json`);
    return true;
  } catch {
    return false;
  }
}

function run(script, args) {
  return spawnSync(process.execPath, [script, ...args], { cwd: root, stdio: ["ignore", "inherit", "inherit"] });
}

/** The command that builds the addon, typed where the user is (npm runs this hook in kvkeep's directory). Keep in sync with addonBuildCommand in src/native/index.ts. */
function buildCommand() {
  const cwd = process.env.INIT_CWD || process.cwd();
  const relative = path.relative(cwd, root);
  const where = relative === "" ? "." : relative.startsWith("..") || path.isAbsolute(relative) ? root : relative;
  if (!root.split(path.sep).includes("node_modules")) return where === "." ? "npm run build:native" : `cd ${where} && npm run build:native`;
  return `npm install --save-dev cmake-js node-addon-api && node ${path.join(where, "scripts", "install.mjs")} --build`;
}

function fallbackLine(reason, howToBuild = `fix the error above, then \`${buildCommand()}\``) {
  console.log(`${prefix} ${reason}; the pure-JS fallback will be used (locks will not exclude other processes). To build the addon: ${howToBuild} (needs cmake and a C++17 compiler).`);
}

/**
 * node-gyp needs Node's headers. It downloads them unless given --nodedir, which breaks
 * offline and sandboxed builds. Most Node installs (distro packages, nvm, the official
 * tarballs) ship them at <prefix>/include/node next to bin/node, so point node-gyp there
 * when they exist; otherwise leave it to node-gyp's own cache/download (or an explicit
 * npm_config_nodedir, which node-gyp reads itself).
 */
function nodeGypArgs() {
  const args = ["rebuild", "--directory", root];
  const nodePrefix = path.resolve(path.dirname(process.execPath), "..");
  const headers = path.join(nodePrefix, "include", "node");
  if (!process.env.npm_config_nodedir && existsSync(path.join(headers, "node_api.h")) && existsSync(path.join(headers, "common.gypi"))) {
    args.push(`--nodedir=${nodePrefix}`);
  }
  args.push(`--jobs=max`);
  return args;
}

function buildWithNodeGyp() {
  // Our devDependency first; npm exposes its bundled copy as npm_config_node_gyp.
  const bin = resolveBin("node-gyp", "node-gyp") ?? process.env.npm_config_node_gyp ?? null;
  if (!bin) {
    console.error(`${prefix} node-gyp is not installed (npm i -D node-gyp).`);
    return 1;
  }
  const args = nodeGypArgs();
  console.log(`${prefix} node-gyp ${args.join(" ")}`);
  const result = spawnSync(process.execPath, [bin, ...args], { cwd: root, stdio: "inherit" });
  return result.status ?? 1;
}

function installHook() {
  const flag = process.env.KVKEEP_NO_NATIVE;
  if (flag === "1" || flag?.toLowerCase() === "true") {
    fallbackLine("KVKEEP_NO_NATIVE is set, so the native addon is not built", `unset it and run \`${buildCommand()}\``);
    return;
  }
  if (existsSync(prebuiltPath)) return; // shipped binary for this platform: nothing to build
  const missing = missingTools();
  if (missing.length > 0) {
    fallbackLine(`no prebuilt addon for ${process.platform}-${process.arch} and no build tools (${missing.join(", ")} not found)`, `\`${buildCommand()}\``);
    return;
  }
  const result = compile();
  if (result.status !== 0) {
    const why = result.error ? result.error.message : `cmake-js exited with ${result.status ?? result.signal}`;
    console.error(`${prefix} building the native addon failed: ${why}`);
    fallbackLine("the native addon could not be built");
  }
}

/** The build tools kvkeep cannot resolve from its directory (an app's own count). */
function missingTools() {
  return ["cmake-js", "node-addon-api", "node-api-headers"].filter((pkg) => !resolvable(pkg));
}

function compile() {
  return run(resolveBin("cmake-js", "cmake-js"), ["compile", "--directory", path.join(root, "native"), "--out", path.join(root, cmakeOutDir)]);
}

/** `--build`: build now, or say why not and exit 1. */
function buildNow() {
  if (existsSync(prebuiltPath)) {
    console.log(`${prefix} ${prebuiltPath} is this platform's prebuilt addon: kvkeep loads it, there is nothing to build.`);
    return 0;
  }
  const missing = missingTools();
  if (missing.length > 0) {
    console.error(`${prefix} cannot build the addon: ${missing.join(", ")} not found from ${root}. Install them in your app: npm install --save-dev cmake-js node-addon-api (node-api-headers comes with cmake-js).`);
    return 1;
  }
  const result = compile();
  if (result.status !== 0) {
    console.error(`${prefix} building the native addon failed (${result.error ? result.error.message : `cmake-js exited with ${result.status ?? result.signal}`}); it needs cmake and a C++17 compiler.`);
    return 1;
  }
  console.log(`${prefix} built ${path.join(root, cmakeOutDir, "Release", "kvkeep.node")}; \`npx kvkeep backend\` says which backend loads.`);
  return 0;
}

if (process.argv.includes("--node-gyp")) {
  process.exitCode = buildWithNodeGyp();
} else if (process.argv.includes("--build")) {
  process.exitCode = buildNow();
} else {
  try {
    installHook();
  } catch (error) {
    console.error(`${prefix} native install step failed: ${error instanceof Error ? error.message : String(error)}`);
    fallbackLine("the native addon could not be built");
  }
  process.exitCode = 0;
}
