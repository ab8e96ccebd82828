/**
 * The README's "Install" section, tried from clean directories, offline (npm's cache):
 *   1. a git checkout, `npm install` in it, then `npm install /path/to/checkout` in an app;
 *   2. `npm pack` in that checkout, then `npm install ./kvkeep-<version>.tgz` in an app —
 *      with dependencies' install scripts off, as npm 11 leaves them by default;
 *   3. `npm install git+file://…` of the checkout (what `github:`/`git+https:` installs do:
 *      npm clones, installs dev dependencies, runs `prepare`, packs).
 * Each app then imports kvkeep, commits a turn, and runs the `kvkeep` binary. The local-path
 * app also type-checks the README's node-llama-cpp snippet against its own node-llama-cpp,
 * and installs again (a no-op for the checkout's dist/); the git app builds the addon with
 * the command the fallback warning gives.
 * The checkout is a `git clone` of this repository's HEAD: uncommitted changes are not in it.
 * Offline: npm's cache has the locked tarballs but not the registry's metadata, which a
 * new dependency range needs; so xxhash-wasm (kvkeep's one dependency) is handed to the
 * apps as a tarball too, packed from the checkout's node_modules.
 */
import { spawn, spawnSync } from "node:child_process";
import { cpSync, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, symlinkSync, writeFileSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { repoRoot } from "../cli/helpers.js";

const version = (JSON.parse(readFileSync(path.join(repoRoot, "package.json"), "utf8")) as { version: string }).version;
const NPM_QUIET = ["--offline", "--no-audit", "--no-fund", "--loglevel=error"];
const MINUTES = 60_000;

/** Run a command; throw with its output when it fails. */
function sh(cwd: string, command: string, args: string[], env: NodeJS.ProcessEnv = {}): string {
  const result = spawnSync(command, args, { cwd, env: { ...process.env, ...env }, encoding: "utf8", timeout: 10 * MINUTES });
  if (result.status !== 0) {
    const why = result.error?.message ?? `exited ${result.status ?? result.signal}`;
    throw new Error(`${command} ${args.join(" ")} (in ${cwd}): ${why}:\n${result.stdout}\n${result.stderr}`);
  }
  return result.stdout + result.stderr;
}

/** An empty npm project. */
function app(name: string): string {
  const dir = path.join(work, name);
  mkdirSync(dir);
  writeFileSync(path.join(dir, "package.json"), JSON.stringify({ name, version: "1.0.0", private: true, type: "module" }));
  return dir;
}

const SMOKE = `
import { generateConfigHash, openKvCacheStore } from "kvkeep";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
const root = fs.mkdtempSync(path.join(os.tmpdir(), "kvkeep-install-"));
const store = openKvCacheStore({ root });
const session = store.createSession("m");
const turn = await session.beginTurn({ kind: "custom", customKey: "c", configHash: generateConfigHash("s"), primeIfMissing: (p) => fs.promises.writeFile(p, "primed") });
await fs.promises.writeFile(turn.savePath, "state");
await session.commitTurn(turn, { kind: "static", messageCount: 2 });
await store.close();
fs.rmSync(root, { recursive: true, force: true });
console.log(JSON.stringify({ backend: store.backend, bytes: fs.existsSync(turn.cachePath) }));
`;

/** Import kvkeep in the app, commit a turn; and run its `kvkeep` binary. */
function tryApp(dir: string): { backend: string; stderr: string; version: string; cliBackend: string } {
  writeFileSync(path.join(dir, "smoke.mjs"), SMOKE);
  const env = { ...process.env };
  delete env.KVKEEP_NO_NATIVE;
  const run = spawnSync(process.execPath, ["smoke.mjs"], { cwd: dir, env, encoding: "utf8", timeout: MINUTES });
  expect(run.status, run.stderr).toBe(0);
  const bin = path.join(dir, "node_modules", ".bin", "kvkeep");
  const cli = (args: string[]): string => {
    const result = spawnSync(bin, args, { cwd: dir, env, encoding: "utf8", timeout: MINUTES });
    expect(result.status, result.stderr).toBe(0);
    return result.stdout.trim();
  };
  return { backend: JSON.parse(run.stdout).backend, stderr: run.stderr, version: cli(["--version"]), cliBackend: cli(["backend"]) };
}

/**
 * The README's node-llama-cpp snippet as an app's TypeScript file: the ```ts block under
 * "Using it with node-llama-cpp", with the names it leaves to the reader declared (the model
 * file, the abort signal, and whose conversation it is: the caller's user id as its scope).
 */
function readmeSnippet(): string {
  const readme = readFileSync(path.join(checkout, "README.md"), "utf8");
  const section = readme.slice(readme.indexOf("## Using it with node-llama-cpp"));
  const block = /```ts\n([\s\S]*?)```/.exec(section)![1]!;
  return `declare const modelPath: string;\ndeclare const signal: AbortSignal;\ndeclare const userId: string;\n${block}\nexport {};\n`;
}

/**
 * Type-check the README snippet in `dir` with the checkout's TypeScript, against the app's
 * own node-llama-cpp: a copy of the checkout's, at the app's path — a separate declaration,
 * as when the app installs it (offline, npm cannot resolve node-llama-cpp's dependencies).
 */
function typeCheckSnippet(dir: string): { status: number | null; output: string } {
  cpSync(path.join(checkout, "node_modules", "node-llama-cpp"), path.join(dir, "node_modules", "node-llama-cpp"), { recursive: true });
  mkdirSync(path.join(dir, "node_modules", "@types"), { recursive: true });
  cpSync(path.join(checkout, "node_modules", "@types", "node"), path.join(dir, "node_modules", "@types", "node"), { recursive: true });
  writeFileSync(path.join(dir, "app.ts"), readmeSnippet());
  writeFileSync(
    path.join(dir, "tsconfig.json"),
    JSON.stringify({
      compilerOptions: { target: "ES2022", module: "NodeNext", moduleResolution: "NodeNext", strict: true, skipLibCheck: true, noEmit: true, types: ["node"] },
      files: ["app.ts"],
    }),
  );
  const tsc = path.join(checkout, "node_modules", "typescript", "bin", "tsc");
  const result = spawnSync(process.execPath, [tsc, "-p", dir], { cwd: dir, encoding: "utf8", timeout: 5 * MINUTES });
  return { status: result.status, output: result.stdout + result.stderr };
}

let work = "";
let checkout = "";
let xxhashTarball = "";

beforeAll(() => {
  work = mkdtempSync(path.join(os.tmpdir(), "kvkeep-install-")); // for the whole file, not one test
  checkout = path.join(work, "kvkeep");
  sh(work, "git", ["clone", "--quiet", repoRoot, checkout]);
  sh(checkout, "npm", ["install", ...NPM_QUIET]); // the README's first step: builds the addon and dist/
  const packed = sh(work, "npm", ["pack", path.join(checkout, "node_modules", "xxhash-wasm"), "--loglevel=error"]).trim().split("\n").pop()!;
  xxhashTarball = path.join(work, packed);
}, 15 * MINUTES);

afterAll(() => {
  if (work) rmSync(work, { recursive: true, force: true, maxRetries: 5 });
});

describe("installing kvkeep as the README says", () => {
  it("a fresh checkout's `npm install` builds dist/ (prepare) and leaves package-lock.json unchanged", () => {
    expect(existsSync(path.join(checkout, "dist", "index.js"))).toBe(true);
    expect(existsSync(path.join(checkout, "dist", "cli", "bin.js"))).toBe(true);
    expect(sh(checkout, "git", ["status", "--porcelain", "--untracked-files=no"])).toBe("");
  });

  it("local path: `npm install /path/to/checkout` gives a working kvkeep with the checkout's addon build; the README snippet type-checks against the app's node-llama-cpp", () => {
    const dir = app("local-path-app");
    const built = statSync(path.join(checkout, "dist", "index.js"));
    // a link: npm runs the checkout's install hook and prepare again, which find nothing to do
    const started = Date.now();
    const output = sh(dir, "npm", ["install", ...NPM_QUIET.filter((f) => f !== "--loglevel=error"), "--foreground-scripts", checkout]);
    console.log(`[install] npm install of the local path in an app: ${((Date.now() - started) / 1000).toFixed(1)} s`);
    expect(output).toContain("dist/ is up to date");
    expect(statSync(path.join(checkout, "dist", "index.js")).ino).toBe(built.ino); // not rebuilt
    const result = tryApp(dir);
    expect(result.backend).toBe("local-build");
    expect(result.version).toBe(version);
    expect(result.cliBackend).toMatch(/^local-build .*cross-process locks: yes$/);
    expect(result.stderr).toBe("");
    // kvkeep's declarations resolve node-llama-cpp from the checkout's dev copy: its types
    // must still take the app's LlamaModel (TS2322 "separate declarations of a private property" before)
    const check = typeCheckSnippet(dir);
    expect(check.output).toBe("");
    expect(check.status).toBe(0);
  }, 15 * MINUTES);

  it("a rebuild in the checkout makes dist/ aside: until it is complete, dist/ is the previous build, whole", async () => {
    const index = path.join(checkout, "dist", "index.js");
    const before = readFileSync(index, "utf8");
    writeFileSync(path.join(checkout, "src", "zz-rebuild-marker.ts"), "export const marker = 1;\n"); // an input changed
    const hold = path.join(work, "release-build");
    const child = spawn(process.execPath, ["scripts/build.mjs", "--if-changed"], { cwd: checkout, env: { ...process.env, KVKEEP_BUILD_HOLD: hold }, stdio: ["ignore", "pipe", "pipe"] });
    let out = "";
    child.stdout.on("data", (d: Buffer) => (out += d.toString()));
    child.stderr.on("data", (d: Buffer) => (out += d.toString()));
    const exited = new Promise<number | null>((resolve) => child.on("close", resolve));
    // while tsup and the Bare build run, and once the new build waits complete beside it
    const deadline = Date.now() + 10 * MINUTES;
    let looks = 0;
    while (!out.includes("built aside") && Date.now() < deadline) {
      expect(readFileSync(index, "utf8")).toBe(before);
      looks++;
      await new Promise((r) => setTimeout(r, 20));
    }
    expect(out).toContain("built aside");
    expect(looks).toBeGreaterThan(10);
    expect(readdirSync(path.join(checkout, "dist"))).toContain("bare");
    writeFileSync(hold, "");
    expect(await exited).toBe(0);
    expect(readdirSync(checkout).filter((n) => n.startsWith("dist."))).toEqual([]); // nothing left beside it
    rmSync(path.join(checkout, "src", "zz-rebuild-marker.ts"));
  }, 15 * MINUTES);

  it("tarball: `npm pack` in the checkout, installed without install scripts, loads its prebuilt addon", () => {
    const packed = sh(checkout, "npm", ["pack", "--pack-destination", work, "--loglevel=error"]);
    const tarball = path.join(work, `kvkeep-${version}.tgz`);
    expect(packed).toContain(`kvkeep-${version}.tgz`);
    const listing = sh(work, "tar", ["-tzf", tarball]);
    for (const file of ["package/LICENSE", "package/README.md", "package/dist/index.js", "package/dist/cli/bin.js", "package/web/index.html", `package/prebuilds/${process.platform}-${process.arch}/kvkeep.node`]) {
      expect(listing).toContain(file);
    }
    expect(existsSync(path.join(checkout, "prebuilds", `${process.platform}-${process.arch}`))).toBe(false); // postpack cleaned up
    const dir = app("tarball-app");
    sh(dir, "npm", ["install", ...NPM_QUIET, "--ignore-scripts", xxhashTarball, tarball]);
    const result = tryApp(dir);
    expect(result.backend).toBe("prebuilt");
    expect(result.cliBackend).toMatch(/^prebuilt .*cross-process locks: yes$/);
    expect(result.version).toBe(version);
    expect(result.stderr).toBe("");
  }, 15 * MINUTES);

  it("git: `npm install git+file://…` builds dist/ through prepare; with no addon it warns once and works", () => {
    const dir = app("git-app");
    // KVKEEP_NO_NATIVE only saves time: the addon npm's clone would build is not packed.
    sh(dir, "npm", ["install", ...NPM_QUIET, xxhashTarball, `git+file://${checkout}`], { KVKEEP_NO_NATIVE: "1" });
    expect(readdirSync(path.join(dir, "node_modules", "kvkeep", "dist"))).toContain("index.js");
    const result = tryApp(dir);
    expect(result.backend).toBe("js-fallback"); // no compiler step ran: the documented fallback
    expect(result.stderr.match(/\[KVKEEP_NATIVE_FALLBACK\]/g)).toHaveLength(1);
    expect(result.version).toBe(version);

    // The warning's command, run as typed in the app. Its first half installs cmake-js and
    // node-addon-api from the registry; offline, the app gets the checkout's (linked: their
    // own dependencies resolve from there).
    const command = /`npm install --save-dev cmake-js node-addon-api && (node \S+ --build)`/.exec(result.stderr)?.[1];
    expect(command, result.stderr).toBe("node node_modules/kvkeep/scripts/install.mjs --build");
    for (const tool of ["cmake-js", "node-addon-api", "node-api-headers"]) {
      symlinkSync(path.join(checkout, "node_modules", tool), path.join(dir, "node_modules", tool));
    }
    const env = { ...process.env };
    delete env.KVKEEP_NO_NATIVE;
    const build = spawnSync(process.execPath, command!.split(" ").slice(1), { cwd: dir, env, encoding: "utf8", timeout: 10 * MINUTES });
    expect(build.status, build.stdout + build.stderr).toBe(0);
    const after = tryApp(dir);
    expect(after.backend).toBe("local-build");
    expect(after.stderr).toBe("");
  }, 20 * MINUTES);
});
