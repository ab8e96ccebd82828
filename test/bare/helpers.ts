/**
 * Running kvkeep under the real Bare runtime from vitest. The Bare build is made once per
 * content (src/, the build script, package.json, the fixtures) into
 * `.cache/bare-pkg/<hash>/`, laid out like an app that installed kvkeep:
 *
 *   .cache/bare-pkg/<hash>/node_modules/kvkeep/   package.json + dist/bare + the addon build (symlinked)
 *   .cache/bare-pkg/<hash>/fixtures/*.mjs          copies of test/bare/fixtures
 *
 * so a fixture's `import … from "kvkeep"` goes through the package's `exports` and its `bare`
 * condition, and the bare-* packages and @qvac/llm-llamacpp resolve from the repo's
 * node_modules further up. Test files running in parallel build the same directory once
 * (a temp directory renamed into place).
 */
import { spawnSync } from "node:child_process";
import { createHash } from "node:crypto";
import { cpSync, existsSync, mkdirSync, readdirSync, readFileSync, renameSync, rmSync, statSync, symlinkSync, writeFileSync } from "node:fs";
import { createRequire } from "node:module";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { buildBare } from "../../scripts/build-bare.js";
import { type ChildRun, runChild } from "../helpers/child.js";

export const repoRoot = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../..");
const FIXTURES = path.join(repoRoot, "test", "bare", "fixtures");

function listFiles(dir: string): string[] {
  return readdirSync(dir, { withFileTypes: true }).flatMap((e) =>
    e.isDirectory() ? listFiles(path.join(dir, e.name)) : [path.join(dir, e.name)],
  );
}

function contentHash(): string {
  const hash = createHash("sha256");
  const files = [
    ...listFiles(path.join(repoRoot, "src")),
    ...listFiles(FIXTURES),
    path.join(repoRoot, "test", "bare", "fs-conformance.ts"),
    path.join(repoRoot, "scripts", "build-bare.ts"),
    path.join(repoRoot, "package.json"),
  ].sort();
  for (const file of files) hash.update(file).update(readFileSync(file));
  return hash.digest("hex").slice(0, 16);
}

let pkg: Promise<string> | null = null;

/** The directory holding the installed-like package and the fixtures (built on first use). */
export function barePackage(): Promise<string> {
  pkg ??= (async () => {
    const parent = path.join(repoRoot, ".cache", "bare-pkg");
    const dir = path.join(parent, contentHash());
    if (existsSync(path.join(dir, "ready"))) return dir;
    // Builds of older sources (a day old: no test run still uses them) go.
    for (const old of existsSync(parent) ? readdirSync(parent) : []) {
      const oldPath = path.join(parent, old);
      if (Date.now() - statSync(oldPath).mtimeMs > 24 * 3600_000) rmSync(oldPath, { recursive: true, force: true });
    }
    const temp = `${dir}.${process.pid}.tmp`;
    rmSync(temp, { recursive: true, force: true });
    const kvkeep = path.join(temp, "node_modules", "kvkeep");
    mkdirSync(kvkeep, { recursive: true });
    cpSync(path.join(repoRoot, "package.json"), path.join(kvkeep, "package.json"));
    await buildBare(path.join(kvkeep, "dist", "bare"));
    for (const build of ["build-cmake", "build"]) {
      if (existsSync(path.join(repoRoot, build))) symlinkSync(path.join(repoRoot, build), path.join(kvkeep, build));
    }
    // The app's own package.json: without it, a fixture's "kvkeep" would resolve to the repo
    // itself (package self-reference) and its dist/bare — possibly stale, or not built.
    writeFileSync(path.join(temp, "package.json"), JSON.stringify({ name: "kvkeep-bare-test-app", private: true, type: "module" }));
    cpSync(FIXTURES, path.join(temp, "fixtures"), { recursive: true });
    // The fs conformance probe, built with the same builtin mapping as the package.
    await buildBare(path.join(temp, "probes"), { "fs-conformance": "test/bare/fs-conformance.ts" });
    writeFileSync(path.join(temp, "ready"), "");
    try {
      renameSync(temp, dir);
    } catch (error) {
      // Another test file built the same content first: use theirs.
      rmSync(temp, { recursive: true, force: true });
      if (!existsSync(path.join(dir, "ready"))) throw error;
    }
    return dir;
  })();
  return pkg;
}

/** What a Bare run printed: its JSON lines parsed (other lines kept in `stdout`). */
export interface BareResult {
  status: number | string;
  lines: Array<Record<string, unknown>>;
  stdout: string;
  stderr: string;
}

function jsonLines(stdout: string): Array<Record<string, unknown>> {
  return stdout
    .split("\n")
    .filter((l) => l.startsWith("{"))
    .map((l) => JSON.parse(l) as Record<string, unknown>);
}

/**
 * A Bare runtime the tests run on. Both dev dependencies are tested, because QVAC users get
 * either: `npm install bare` (the `bare` package, whose launcher runs the binary of the
 * `bare-runtime` it depends on: Bare 1.31 today) and the binary package pinned directly
 * (`bare-runtime-linux-x64`, 1.33).
 */
export interface BareRuntime {
  /** "1.31.0", as `bare --version` prints it without the v. */
  readonly version: string;
  /** Which package it came from. */
  readonly from: string;
  readonly binary: string;
}

function bareVersion(binary: string): string | null {
  const r = spawnSync(binary, ["--version"], { encoding: "utf8", timeout: 20_000 });
  return r.status === 0 ? r.stdout.trim().replace(/^v/, "") : null;
}

function findRuntimes(): BareRuntime[] {
  const found: BareRuntime[] = [];
  const problems: string[] = [];
  const add = (from: string, binary: () => string): void => {
    let file: string;
    try {
      file = binary();
    } catch (error) {
      problems.push(`${from}: ${(error as Error).message}`);
      return;
    }
    const version = existsSync(file) && statSync(file).isFile() ? bareVersion(file) : null;
    if (!version) {
      problems.push(`${from}: ${file} does not run`);
      return;
    }
    // Both packages may one day install the same version: test it once.
    if (!found.some((r) => r.version === version)) found.push({ version, from, binary: file });
  };
  const require = createRequire(path.join(repoRoot, "package.json"));
  add("bare-runtime-linux-x64", () => path.join(path.dirname(require.resolve("bare-runtime-linux-x64/package")), "bin", "bare"));
  // What `npx bare` runs: the `bare` package's launcher asks its bare-runtime for the binary.
  add("bare", () => {
    const fromBare = createRequire(require.resolve("bare"));
    return (fromBare("bare-runtime") as (referrer: string) => string)("bare");
  });
  // The dev dependencies install both on linux-x64: one missing there is a broken install,
  // never a reason to skip its tests. Elsewhere (no binary package) the Bare tests skip.
  if (process.platform === "linux" && process.arch === "x64" && problems.length > 0) {
    throw new Error(`a Bare runtime the tests need is missing (run npm install): ${problems.join("; ")}`);
  }
  return found;
}

let runtimes: readonly BareRuntime[] | null = null;

/** The Bare runtimes installed here, newest first (empty off linux-x64: the Bare tests skip). */
export function bareRuntimes(): readonly BareRuntime[] {
  runtimes ??= findRuntimes().sort((a, b) => compareVersions(b.version, a.version));
  return runtimes;
}

function compareVersions(a: string, b: string): number {
  const pa = a.split(".").map(Number);
  const pb = b.split(".").map(Number);
  for (let i = 0; i < 3; i++) if ((pa[i] ?? 0) !== (pb[i] ?? 0)) return (pa[i] ?? 0) - (pb[i] ?? 0);
  return 0;
}

/** Runs fixtures on one runtime. */
export interface BareRunner {
  readonly runtime: BareRuntime;
  /** Start a fixture with a JSON job as its last argument. */
  startBare(fixture: string, job: unknown, env?: NodeJS.ProcessEnv): Promise<ChildRun>;
  /** Run a fixture to its end (killed after `timeoutMs`). */
  runBare(fixture: string, job: unknown, options?: { timeoutMs?: number; env?: NodeJS.ProcessEnv }): Promise<BareResult>;
}

export function onBare(runtime: BareRuntime): BareRunner {
  const startBare = async (fixture: string, job: unknown, env: NodeJS.ProcessEnv = {}): Promise<ChildRun> => {
    const dir = await barePackage();
    return runChild(path.join(dir, "fixtures", fixture), [JSON.stringify(job)], env, runtime.binary);
  };
  const runBare = async (fixture: string, job: unknown, options: { timeoutMs?: number; env?: NodeJS.ProcessEnv } = {}): Promise<BareResult> => {
    const run = await startBare(fixture, job, options.env);
    const timer = setTimeout(() => run.child.kill("SIGKILL"), options.timeoutMs ?? 50_000);
    const status = await run.exited;
    clearTimeout(timer);
    return { status, lines: jsonLines(run.stdout()), stdout: run.stdout(), stderr: run.stderr() };
  };
  return { runtime, startBare, runBare };
}

/** The newest runtime installed (benchmarks run on it); throws when there is none. */
export function newestBare(): BareRunner {
  const [newest] = bareRuntimes();
  if (!newest) throw new Error("no Bare runtime is installed here (bare-runtime-linux-x64 / bare: linux-x64 only)");
  return onBare(newest);
}

export { jsonLines };
