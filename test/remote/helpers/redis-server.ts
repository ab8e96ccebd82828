/**
 * Real redis-server processes for the remote-tier tests: a single instance or a 3-node
 * cluster, on free loopback ports, in a temp directory; stopped by the test (and killed
 * if the test process exits first). Needs Debian's `redis-server` (`.ci/run` installs it).
 */
import { type ChildProcess, execFile, spawn, spawnSync } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import net from "node:net";
import os from "node:os";
import path from "node:path";
import { promisify } from "node:util";

const run = promisify(execFile);
const live = new Set<ChildProcess>();
process.on("exit", () => {
  for (const child of live) child.kill("SIGKILL");
});

export function assertRedisInstalled(): void {
  const probe = spawnSync("redis-server", ["--version"], { encoding: "utf8" });
  if (probe.error || probe.status !== 0) {
    throw new Error("redis-server is not installed: apt-get install redis-server (bash .ci/run installs it).");
  }
}

/** A port nobody listens on right now (the kernel's pick). */
export async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.unref();
    server.on("error", reject);
    server.listen(0, "127.0.0.1", () => {
      const { port } = server.address() as net.AddressInfo;
      server.close(() => resolve(port));
    });
  });
}

export interface RedisServer {
  port: number;
  url: string;
  dir: string;
  /** The running process (null while stopped). */
  child(): ChildProcess | null;
  /** Send a command with redis-cli; returns its stdout. */
  cli(...args: string[]): Promise<string>;
  /** SIGKILL it (a crash: nothing saved). */
  kill(): Promise<void>;
  /** Start it again on the same port (empty: no persistence). */
  restart(): Promise<void>;
  /** Stop it and remove its directory. */
  stop(): Promise<void>;
}

interface StartOptions {
  /** Extra `--name value` arguments. */
  args?: string[];
  port?: number;
  dir?: string;
  /** Cluster bus port (cluster nodes only). */
  clusterPort?: number;
}

async function launch(port: number, dir: string, args: string[]): Promise<ChildProcess> {
  const child = spawn(
    "redis-server",
    ["--port", String(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", dir, "--loglevel", "notice", ...args],
    { stdio: ["ignore", "pipe", "pipe"] },
  );
  live.add(child);
  child.on("exit", () => live.delete(child));
  let out = "";
  await new Promise<void>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`redis-server on ${port} did not start: ${out}`)), 15_000);
    child.stdout!.setEncoding("utf8").on("data", (chunk: string) => {
      out += chunk;
      if (out.includes("Ready to accept connections")) {
        clearTimeout(timer);
        resolve();
      }
    });
    child.on("exit", (code) => {
      clearTimeout(timer);
      reject(new Error(`redis-server on ${port} exited (${code}) at start: ${out}`));
    });
  });
  child.stdout!.resume();
  child.stderr!.resume();
  return child;
}

/**
 * Start a redis-server. Without a given port, a free one is picked; another process may
 * take it before redis binds, so a start that fails is retried on new ports.
 */
export async function startRedis(options: StartOptions = {}): Promise<RedisServer> {
  for (let attempt = 1; ; attempt++) {
    try {
      return await startRedisOnce({
        ...options,
        port: options.port ?? (await freePort()),
        ...(options.clusterPort === undefined ? {} : { clusterPort: attempt === 1 ? options.clusterPort : await freePort() }),
      });
    } catch (error) {
      if (options.port !== undefined || attempt >= 3) throw error;
    }
  }
}

async function startRedisOnce(options: StartOptions & { port: number }): Promise<RedisServer> {
  assertRedisInstalled();
  const port = options.port;
  const dir = options.dir ?? mkdtempSync(path.join(os.tmpdir(), "kvkeep-redis-"));
  const args = [...(options.args ?? [])];
  if (options.clusterPort !== undefined) {
    args.push("--cluster-enabled", "yes", "--cluster-config-file", `nodes-${port}.conf`, "--cluster-node-timeout", "2000");
    args.push("--cluster-port", String(options.clusterPort));
  }
  let child: ChildProcess | null;
  try {
    child = await launch(port, dir, args);
  } catch (error) {
    if (options.dir === undefined) rmSync(dir, { recursive: true, force: true });
    throw error;
  }
  const exitOf = (c: ChildProcess): Promise<void> =>
    c.exitCode !== null || c.signalCode !== null ? Promise.resolve() : new Promise((r) => c.once("exit", () => r()));
  return {
    port,
    url: `redis://127.0.0.1:${port}`,
    dir,
    child: () => child,
    async cli(...cmd: string[]) {
      const { stdout } = await run("redis-cli", ["-p", String(port), ...cmd]);
      return stdout.trim();
    },
    async kill() {
      if (!child) return;
      const c = child;
      child = null;
      c.kill("SIGKILL");
      await exitOf(c);
    },
    async restart() {
      if (child) throw new Error("redis-server is still running");
      child = await launch(port, dir, args);
    },
    async stop() {
      if (child) {
        const c = child;
        child = null;
        c.kill("SIGTERM");
        const timer = setTimeout(() => c.kill("SIGKILL"), 5000);
        await exitOf(c);
        clearTimeout(timer);
      }
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

export interface RedisCluster {
  nodes: RedisServer[];
  rootNodes: Array<{ url: string }>;
  stop(): Promise<void>;
}

/** Three masters, no replicas: `redis-cli --cluster create … --cluster-replicas 0 --cluster-yes`. */
export async function startCluster(): Promise<RedisCluster> {
  const nodes: RedisServer[] = [];
  try {
    for (let i = 0; i < 3; i++) nodes.push(await startRedis({ clusterPort: await freePort() }));
    await run("redis-cli", ["--cluster", "create", ...nodes.map((n) => `127.0.0.1:${n.port}`), "--cluster-replicas", "0", "--cluster-yes"]);
    const deadline = Date.now() + 20_000;
    for (const node of nodes) {
      while (!(await node.cli("cluster", "info")).includes("cluster_state:ok")) {
        if (Date.now() > deadline) throw new Error("the cluster did not reach cluster_state:ok");
        await new Promise((r) => setTimeout(r, 100));
      }
    }
  } catch (error) {
    await Promise.all(nodes.map((n) => n.stop()));
    throw error;
  }
  return {
    nodes,
    rootNodes: nodes.map((n) => ({ url: n.url })),
    stop: async () => {
      await Promise.all(nodes.map((n) => n.stop()));
    },
  };
}
