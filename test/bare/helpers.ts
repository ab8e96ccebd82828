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
import { createHash } from "node:crypto";
import { cpSync, existsSync, mkdirSync, readdirSync, readFileSync, renameSync, rmSync, statSync, symlinkSync, writeFileSync } from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { buildBare } from "../../scripts/build-bare.js";
import { type ChildRun, runChild } from "../helpers/child.js";

export const repoRoot = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../..");
export const BARE_BINARY = path.join(repoRoot, "node_modules", "bare-runtime-linux-x64", "bin", "bare");
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

/** Start a fixture under Bare with a JSON job as its last argument. */
export async function startBare(fixture: string, job: unknown, env: NodeJS.ProcessEnv = {}): Promise<ChildRun> {
  const dir = await barePackage();
  return runChild(path.join(dir, "fixtures", fixture), [JSON.stringify(job)], env, BARE_BINARY);
}

/** Run a fixture under Bare to its end (killed after `timeoutMs`). */
export async function runBare(fixture: string, job: unknown, options: { timeoutMs?: number; env?: NodeJS.ProcessEnv } = {}): Promise<BareResult> {
  const run = await startBare(fixture, job, options.env);
  const timer = setTimeout(() => run.child.kill("SIGKILL"), options.timeoutMs ?? 50_000);
  const status = await run.exited;
  clearTimeout(timer);
  return { status, lines: jsonLines(run.stdout()), stdout: run.stdout(), stderr: run.stderr() };
}

export { jsonLines };

/** True when this machine can run the Bare tests (the pinned runtime is linux-x64 only). */
export function bareAvailable(): boolean {
  return existsSync(BARE_BINARY) && statSync(BARE_BINARY).isFile();
}
