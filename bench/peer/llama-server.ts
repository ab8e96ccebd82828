/**
 * llama.cpp's own `llama-server`, built from the very source node-llama-cpp ships
 * (`node_modules/node-llama-cpp/llama/gitRelease.bundle`, the commit its binaries come from),
 * natively for this CPU, with no network: the peer bench/peer.ts measures kvkeep against.
 * Nothing of llama.cpp enters the repository: the clone and the build live in a directory
 * outside it ($KVKEEP_PEER_DIR, else <tmp>/kvkeep-peer).
 */
import { type ChildProcess, execFileSync, spawn } from "node:child_process";
import { existsSync, mkdirSync, rmSync } from "node:fs";
import net from "node:net";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";

const repoRoot = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../..");
export const BUNDLE = path.join(repoRoot, "node_modules/node-llama-cpp/llama/gitRelease.bundle");

export function peerDir(): string {
  return process.env.KVKEEP_PEER_DIR || path.join(os.tmpdir(), "kvkeep-peer");
}

/** Where bench/peer.ts builds llama-server when not given one. */
export function defaultLlamaServerPath(): string {
  return path.join(peerDir(), "llama.cpp/build/bin/llama-server");
}

function run(command: string, args: string[], cwd?: string): void {
  execFileSync(command, args, { cwd, stdio: ["ignore", "inherit", "inherit"] });
}

/**
 * Clone the bundle and build `llama-server` natively (GGML_NATIVE, OpenMP, Release): ~20–40
 * minutes on 2 cores. Returns the binary's path.
 */
export function buildLlamaServer(): string {
  if (!existsSync(BUNDLE)) throw new Error(`no ${BUNDLE}: run npm install first (node-llama-cpp ships the llama.cpp source there)`);
  const src = path.join(peerDir(), "llama.cpp");
  rmSync(src, { recursive: true, force: true });
  mkdirSync(peerDir(), { recursive: true });
  process.stderr.write(`building llama-server from ${BUNDLE} in ${src} (offline; 20-40 minutes on 2 cores)\n`);
  run("git", ["clone", "--quiet", BUNDLE, src]);
  run("cmake", [
    "-B", "build", "-DGGML_NATIVE=ON", "-DLLAMA_CURL=OFF", "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_EXAMPLES=OFF",
    "-DLLAMA_BUILD_SERVER=ON", "-DCMAKE_BUILD_TYPE=Release",
  ], src);
  run("cmake", ["--build", "build", "--target", "llama-server", `-j${Math.max(1, os.availableParallelism())}`], src);
  return defaultLlamaServerPath();
}

/** The commit a llama.cpp checkout is at (the bundle's is node-llama-cpp's release commit). */
export function checkoutCommit(binary: string): string | null {
  const src = path.resolve(path.dirname(binary), "../..");
  try {
    return execFileSync("git", ["-C", src, "rev-parse", "--short", "HEAD"], { encoding: "utf8" }).trim();
  } catch {
    return null;
  }
}

export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.once("error", reject);
    server.listen(0, "127.0.0.1", () => {
      const { port } = server.address() as net.AddressInfo;
      server.close(() => resolve(port));
    });
  });
}

export interface LlamaServerProcess {
  readonly url: string;
  readonly pid: number;
  /** POST /slots/0?action=save|restore (needs --slot-save-path). */
  slot(action: "save" | "restore", filename: string): Promise<void>;
  /** SIGKILL, then wait for the exit. */
  kill(): Promise<void>;
  stderr(): string;
}

/** Start llama-server with `args` on a free loopback port and wait until /health says it is ready. */
export async function startLlamaServer(binary: string, args: string[]): Promise<LlamaServerProcess> {
  const port = await freePort();
  const child: ChildProcess = spawn(binary, ["--host", "127.0.0.1", "--port", String(port), ...args], { stdio: ["ignore", "ignore", "pipe"] });
  let err = "";
  child.stderr!.setEncoding("utf8").on("data", (chunk: string) => {
    err = (err + chunk).slice(-20_000);
  });
  const exited = new Promise<void>((resolve) => child.once("exit", () => resolve()));
  let dead = false;
  void exited.then(() => (dead = true));
  const url = `http://127.0.0.1:${port}`;
  for (const started = Date.now(); ; ) {
    if (dead) throw new Error(`llama-server exited at start: ${err.slice(-2000)}`);
    if (Date.now() - started > 120_000) throw new Error(`llama-server not ready after 120 s: ${err.slice(-2000)}`);
    try {
      if ((await fetch(`${url}/health`)).ok) break;
    } catch {
      // not listening yet
    }
    await new Promise((r) => setTimeout(r, 20));
  }
  return {
    url,
    pid: child.pid!,
    async slot(action, filename) {
      const response = await fetch(`${url}/slots/0?action=${action}`, {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify({ filename }),
      });
      if (!response.ok) throw new Error(`llama-server /slots ${action} ${filename}: ${response.status} ${await response.text()}`);
      await response.json();
    },
    async kill() {
      if (!dead) child.kill("SIGKILL");
      await exited;
    },
    stderr: () => err,
  };
}
