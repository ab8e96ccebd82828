/**
 * Real child processes for crash and multi-process tests. A fixture script is bundled
 * once per test run with esbuild (kvkeep's sources inlined, node_modules external) into
 * `.cache/test-bundles/` inside the repo — so the native loader still finds the package
 * root — and started with plain `node`: ~0.1 s per spawn instead of ~0.6 s through tsx.
 */
import { type ChildProcess, spawn } from "node:child_process";
import { createHash } from "node:crypto";
import { existsSync, mkdirSync, readFileSync, renameSync } from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { build } from "esbuild";

const repoRoot = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../..");
const bundleDir = path.join(repoRoot, ".cache", "test-bundles");
const bundles = new Map<string, Promise<string>>();

/** Bundle `entry` (a path relative to the repo) and return the .mjs path; cached by content. */
export function bundleFixture(entry: string): Promise<string> {
  let pending = bundles.get(entry);
  if (!pending) {
    pending = (async () => {
      const abs = path.join(repoRoot, entry);
      mkdirSync(bundleDir, { recursive: true });
      const tag = createHash("sha256").update(readFileSync(abs)).update(String(Date.now())).digest("hex").slice(0, 12);
      const out = path.join(bundleDir, `${path.basename(entry, ".ts")}-${process.pid}-${tag}.mjs`);
      const temp = `${out}.building`;
      await build({
        entryPoints: [abs],
        outfile: temp,
        bundle: true,
        platform: "node",
        format: "esm",
        target: "node20",
        packages: "external",
        sourcemap: "inline",
        logLevel: "error",
      });
      renameSync(temp, out);
      return out;
    })();
    bundles.set(entry, pending);
  }
  return pending;
}

export interface ChildRun {
  child: ChildProcess;
  /** Everything the child printed on stdout so far. */
  stdout(): string;
  stderr(): string;
  /** Resolves with the exit code (or the signal name) when the child ends. */
  exited: Promise<number | string>;
  /** Resolves when a stdout line satisfies `test`. */
  waitForLine(test: (line: string) => boolean, timeoutMs?: number): Promise<string>;
}

/** Start `script` with `runtime` (default: this Node; test/bare passes the `bare` binary). */
export function runChild(script: string, args: string[], env: NodeJS.ProcessEnv = {}, runtime: string = process.execPath): ChildRun {
  if (!existsSync(script)) throw new Error(`no bundled fixture at ${script}`);
  const child = spawn(runtime, [script, ...args], {
    env: { ...process.env, ...env },
    stdio: ["ignore", "pipe", "pipe"],
  });
  let out = "";
  let err = "";
  const lineWaiters: Array<{ test: (l: string) => boolean; resolve: (l: string) => void }> = [];
  child.stdout!.setEncoding("utf8").on("data", (chunk: string) => {
    const start = out.length;
    out += chunk;
    const lines = out.slice(out.lastIndexOf("\n", start - 1) + 1).split("\n");
    for (const line of lines) {
      for (const w of [...lineWaiters]) {
        if (w.test(line)) {
          lineWaiters.splice(lineWaiters.indexOf(w), 1);
          w.resolve(line);
        }
      }
    }
  });
  child.stderr!.setEncoding("utf8").on("data", (chunk: string) => (err += chunk));
  const exited = new Promise<number | string>((resolve) => child.on("exit", (code, signal) => resolve(code ?? signal ?? -1)));
  return {
    child,
    stdout: () => out,
    stderr: () => err,
    exited,
    waitForLine(test, timeoutMs = 30_000) {
      const existing = out.split("\n").find(test);
      if (existing !== undefined) return Promise.resolve(existing);
      return new Promise((resolve, reject) => {
        const timer = setTimeout(() => reject(new Error(`child printed no matching line in ${timeoutMs} ms; stderr: ${err}`)), timeoutMs);
        void exited.then((code) => {
          clearTimeout(timer);
          reject(new Error(`child exited (${code}) before printing a matching line; stderr: ${err}`));
        });
        lineWaiters.push({
          test,
          resolve: (l) => {
            clearTimeout(timer);
            resolve(l);
          },
        });
      });
    },
  };
}

/** The file-system backend a child runs on. */
export type ChildBackend = "native" | "js-fallback";

/**
 * The backends hostile-file children run on: both (the fallback is forced in the child), or
 * only the fallback when this whole run forces it (`KVKEEP_NO_NATIVE=1`).
 */
export const CHILD_BACKENDS: ChildBackend[] = process.env.KVKEEP_NO_NATIVE === "1" ? ["js-fallback"] : ["native", "js-fallback"];

/**
 * Run `script` with `args` on `backend`, SIGKILLed if it still runs after `killAfterMs` — a
 * regression that opens a FIFO blocking parks a libuv thread, and then not even
 * process.exit() returns. Resolves the JSON of its last stdout line; rejects when it hung or failed.
 */
export async function runChildScenario<T>(script: string, args: string[], backend: ChildBackend, killAfterMs: number): Promise<T> {
  const run = runChild(script, args, backend === "js-fallback" ? { KVKEEP_NO_NATIVE: "1" } : { KVKEEP_NO_NATIVE: "" });
  const timer = setTimeout(() => run.child.kill("SIGKILL"), killAfterMs);
  const code = await run.exited;
  clearTimeout(timer);
  if (code !== 0) {
    const what = code === "SIGKILL" ? `hung and was killed after ${killAfterMs} ms` : `failed (${code})`;
    throw new Error(`the child ${args.join(" ")} ${what}: ${run.stderr()}`);
  }
  return JSON.parse(run.stdout().trim().split("\n").pop()!) as T;
}
