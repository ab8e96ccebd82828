/** Running the real, built `kvkeep` binary (dist/cli/bin.js) on real cache roots. */
import { spawn } from "node:child_process";
import { promises as fs } from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { generateConfigHash, openKvCacheStore } from "../../src/index.js";
import type { RemoteTier } from "../../src/remote/types.js";
import { customTurn, writeState } from "../helpers/fake-engine.js";
import { tempDir } from "../helpers/temp-root.js";

export const repoRoot = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../..");
export const bin = path.join(repoRoot, "dist", "cli", "bin.js");

export interface Run {
  code: number;
  stdout: string;
  stderr: string;
}

function collect(child: ReturnType<typeof spawn>, timeoutMs: number): Promise<Run> {
  let stdout = "";
  let stderr = "";
  child.stdout?.on("data", (d: Buffer) => (stdout += d.toString()));
  child.stderr?.on("data", (d: Buffer) => (stderr += d.toString()));
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      child.kill("SIGKILL");
      reject(new Error(`kvkeep did not exit within ${timeoutMs} ms; stdout: ${stdout}; stderr: ${stderr}`));
    }, timeoutMs);
    child.on("error", reject);
    child.on("close", (code) => {
      clearTimeout(timer);
      resolve({ code: code ?? -1, stdout, stderr });
    });
  });
}

/** `kvkeep ...args` with stdin, stdout and stderr as pipes (no terminal). */
export function kvkeep(args: readonly string[], options: { input?: string; env?: NodeJS.ProcessEnv } = {}): Promise<Run> {
  const child = spawn(process.execPath, [bin, ...args], { env: { ...process.env, ...options.env }, stdio: ["pipe", "pipe", "pipe"] });
  child.stdin.end(options.input ?? "");
  return collect(child, 30_000);
}

const shQuote = (s: string): string => `'${s.replace(/'/g, `'\\''`)}'`;

/**
 * `kvkeep ...args` on a real pseudo-terminal (util-linux `script`): stdin, stdout and stderr
 * are all the terminal, and `input` is typed into it. Returns what the terminal showed.
 */
export function kvkeepOnTerminal(args: readonly string[], input = ""): Promise<{ code: number; screen: string }> {
  const command = [process.execPath, bin, ...args].map(shQuote).join(" ");
  const child = spawn("script", ["-qec", command, "/dev/null"], { stdio: ["pipe", "pipe", "pipe"], env: { ...process.env, COLUMNS: "120", LINES: "40" } });
  child.stdin.write(input);
  // Keep stdin open until the command exits: on EOF `script` would end the session early.
  return collect(child, 30_000).then((run) => ({ code: run.code, screen: run.stdout + run.stderr }));
}

/** The CLI's JSON output. */
export function json<T = any>(run: Run): T {
  return JSON.parse(run.stdout) as T;
}

/** The error object the CLI prints on stderr with --json. */
export function jsonError(run: Run): { code: string; message: string; exitCode: number } {
  return (JSON.parse(run.stderr) as { error: { code: string; message: string; exitCode: number } }).error;
}

export const CONFIG = generateConfigHash("Be brief.");

/**
 * A root with named caches (key → model → message count) and `auto` auto-mode caches
 * (uploaded to `remote` too, when given),
 * written through the library as an app would.
 */
export async function rootWith(
  named: Record<string, Record<string, number>>,
  options: { root?: string; auto?: number; bytes?: number; remote?: RemoteTier } = {},
): Promise<string> {
  const root = options.root ?? tempDir("kvkeep-cli-");
  // With a remote tier, close() below finishes the uploads: the states are in Redis after.
  const store = openKvCacheStore({ root, remote: options.remote });
  for (const [key, models] of Object.entries(named)) {
    for (const [model, count] of Object.entries(models)) await customTurn(store.createSession(model), key, CONFIG, count);
  }
  const session = store.createSession("m");
  for (let i = 0; i < (options.auto ?? 0); i++) {
    const history = [{ role: "user", content: `conversation ${i}` }];
    const turn = await session.beginTurn({ kind: "auto", configHash: CONFIG, history, primeIfMissing: async (p) => void (await writeState(p, 256)) });
    await writeState(turn.savePath, options.bytes ?? 4096);
    const target = session.autoCachePath(CONFIG, [...history, { role: "assistant", content: "ok" }]);
    await session.commitTurn(turn, { kind: "autoRename", targetCachePath: target, messageCount: 2 });
  }
  await store.close();
  return root;
}

/** Every cache file (`.bin`) under a root, relative, sorted. */
export async function cacheFiles(root: string): Promise<string[]> {
  const out: string[] = [];
  for (const key of await fs.readdir(root)) {
    if (key === ".kvkeep") continue;
    for (const model of await fs.readdir(path.join(root, key)).catch(() => [])) {
      for (const file of await fs.readdir(path.join(root, key, model)).catch(() => [])) {
        if (file.endsWith(".bin")) out.push(`${key}/${model}/${file}`);
      }
    }
  }
  return out.sort();
}
