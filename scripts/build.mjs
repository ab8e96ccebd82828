#!/usr/bin/env node
/**
 * `npm run build`: dist/ from the sources — tsup (the Node build and its .d.ts), then the
 * Bare build (scripts/build-bare.ts) into dist/bare.
 *
 * Built aside, then swapped in: the new build goes to a sibling directory and replaces
 * dist/ only once it is complete, so an app using the checkout (a local-path install links
 * to it) never sees dist/ empty or half-built. (tsup's `clean` used to empty dist/ for the
 * ~30 s a build takes.)
 *
 *   node scripts/build.mjs               always build
 *   node scripts/build.mjs --if-changed  build only if an input changed since dist/ was
 *                                        built (the `prepare` hook: an app's every
 *                                        `npm install` runs it in a linked checkout)
 *
 * The inputs are hashed into dist/.build-inputs: src/, the build scripts and configs,
 * package.json, and the versions of the tools that build.
 */
import { spawnSync } from "node:child_process";
import { createHash } from "node:crypto";
import { existsSync, readdirSync, readFileSync, renameSync, rmSync, writeFileSync } from "node:fs";
import { createRequire } from "node:module";
import path from "node:path";
import { fileURLToPath } from "node:url";

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..");
const dist = path.join(root, "dist");
const STAMP = ".build-inputs";
const prefix = "kvkeep:";

function listFiles(dir) {
  return readdirSync(dir, { withFileTypes: true }).flatMap((e) => (e.isDirectory() ? listFiles(path.join(dir, e.name)) : [path.join(dir, e.name)]));
}

/** A hash of everything dist/ is made from. */
export function buildInputsHash() {
  const require = createRequire(path.join(root, "package.json"));
  const hash = createHash("sha256");
  const files = [
    ...listFiles(path.join(root, "src")),
    ...["package.json", "tsconfig.json", "tsup.config.ts", "scripts/build.mjs", "scripts/build-bare.ts"].map((f) => path.join(root, f)),
  ].sort();
  for (const file of files) hash.update(path.relative(root, file)).update("\0").update(readFileSync(file)).update("\0");
  for (const tool of ["tsup", "esbuild", "typescript"]) {
    let version = "absent";
    try {
      version = JSON.parse(readFileSync(require.resolve(`${tool}/package.json`), "utf8")).version;
    } catch {
      // not installed: building fails below with tsup's own message
    }
    hash.update(`${tool}@${version}\0`);
  }
  return hash.digest("hex");
}

class BuildFailed extends Error {}

function run(label, command, args) {
  const result = spawnSync(command, args, { cwd: root, stdio: "inherit" });
  if (result.status !== 0) throw new BuildFailed(`${label} failed (${result.error?.message ?? `exit ${result.status ?? result.signal}`})`);
}

const sleep = (ms) => Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, ms);

/** Leftovers of a build that was killed (its pid no longer runs). */
function removeLeftovers() {
  for (const name of readdirSync(root)) {
    const m = /^dist\.(next|old)-(\d+)$/.exec(name);
    if (!m) continue;
    let alive = true;
    try {
      process.kill(Number(m[2]), 0);
    } catch (error) {
      alive = error.code === "EPERM";
    }
    if (!alive || Number(m[2]) === process.pid) rmSync(path.join(root, name), { recursive: true, force: true });
  }
}

function bin(pkg, name) {
  const require = createRequire(path.join(root, "package.json"));
  const pkgJson = require.resolve(`${pkg}/package.json`);
  const field = JSON.parse(readFileSync(pkgJson, "utf8")).bin;
  return path.join(path.dirname(pkgJson), typeof field === "string" ? field : field[name]);
}

const inputs = buildInputsHash();
if (process.argv.includes("--if-changed")) {
  let built = null;
  try {
    built = readFileSync(path.join(dist, STAMP), "utf8").trim();
  } catch {
    // never built here
  }
  if (built === inputs && existsSync(path.join(dist, "index.js"))) {
    console.log(`${prefix} dist/ is up to date (no source changed since it was built); not rebuilding.`);
    process.exit(0);
  }
}

const next = path.join(root, `dist.next-${process.pid}`);
const old = path.join(root, `dist.old-${process.pid}`);
removeLeftovers();
try {
  run("tsup", process.execPath, [bin("tsup", "tsup"), "--out-dir", next]);
  run("the Bare build", process.execPath, [bin("tsx", "tsx"), path.join(root, "scripts", "build-bare.ts"), path.join(next, "bare")]);
  writeFileSync(path.join(next, STAMP), `${inputs}\n`);
  // Tests hold the build here to look at dist/ while the new one is complete but not yet in place.
  const hold = process.env.KVKEEP_BUILD_HOLD;
  if (hold) {
    console.log(`${prefix} built aside, holding until ${hold} exists`);
    while (!existsSync(hold)) sleep(20);
  }
  // Two renames, back to back: dist/ is the whole old build, then the whole new one.
  if (existsSync(dist)) renameSync(dist, old);
  renameSync(next, dist);
} catch (error) {
  console.error(`${prefix} ${error instanceof BuildFailed ? error.message : `building dist/ failed: ${error}`}; dist/ was left as it was.`);
  process.exitCode = 1;
} finally {
  rmSync(next, { recursive: true, force: true });
  rmSync(old, { recursive: true, force: true });
}
