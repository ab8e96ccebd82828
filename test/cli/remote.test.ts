/**
 * `kvkeep scan | rm | gc --remote`: the real built binary against real redis-server
 * processes (a single instance, and a 3-node cluster for the commands that walk every
 * node), with the states uploaded by real stores, as the fleet's machines would.
 */
import { execFileSync } from "node:child_process";
import { promises as fs } from "node:fs";
import net from "node:net";
import os from "node:os";
import path from "node:path";
import { createClient, createCluster, RESP_TYPES } from "redis";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { openKvCacheStore } from "../../src/index.js";
import { createRedisTier } from "../../src/remote/redis/index.js";
import { keyTag } from "../../src/remote/redis/keys.js";
import type { RemoteTier } from "../../src/remote/types.js";
import { countingPrime } from "../helpers/fake-engine.js";
import { tempDir } from "../helpers/temp-root.js";
import { type RedisCluster, type RedisServer, startCluster, startRedis } from "../remote/helpers/redis-server.js";
import { makeState, TEST_TIMEOUT_MS, uploadWith } from "../remote/helpers/states.js";
import { cacheFiles, CONFIG, json, jsonError, kvkeep, kvkeepOnTerminal, repoRoot, rootWith } from "./helpers.js";

const connectRaw = (url: string) => createClient({ url }).on("error", () => {}).connect();
let server: RedisServer;
let raw: Awaited<ReturnType<typeof connectRaw>>;
let tenant = 0;

beforeAll(async () => {
  server = await startRedis();
  raw = await connectRaw(server.url);
});
afterAll(async () => {
  raw?.destroy();
  await server?.stop();
});

/** One tenant of the shared server per test: its prefix, tiers on it, and the CLI's --remote options. */
function tenantOf(url = () => server.url) {
  const keyPrefix = `kvkeep:cli${++tenant}:`;
  return {
    keyPrefix,
    tier: (): RemoteTier => createRedisTier({ url: url(), keyPrefix, chunkBytes: 4096, timeoutMs: TEST_TIMEOUT_MS }),
    args: (): string[] => ["--remote", url(), "--remote-prefix", keyPrefix],
  };
}

/** Another machine: a fresh root on the same tenant. Does a turn on `key` resume (hit), or start from nothing? */
async function resumesOn(t: ReturnType<typeof tenantOf>, key: string, model = "m1"): Promise<{ hit: boolean; savedCount: number }> {
  const store = openKvCacheStore({ root: tempDir(), remote: t.tier() });
  try {
    const session = store.createSession(model);
    const prime = countingPrime();
    const turn = await session.beginTurn({ kind: "custom", customKey: key, configHash: CONFIG, primeIfMissing: prime });
    await session.rollback(turn);
    return { hit: prime.calls.length === 0, savedCount: turn.savedCount };
  } finally {
    await store.close();
  }
}

/** Make every state of `cacheKey` under `keyPrefix` look unused for `seconds` (RESTORE … IDLETIME, expiry kept). */
async function age(keyPrefix: string, cacheKey: string, seconds: number): Promise<void> {
  const bin = raw.withTypeMapping({ [RESP_TYPES.BLOB_STRING]: Buffer });
  for await (const keys of raw.scanIterator({ MATCH: `${keyPrefix}{${keyTag(cacheKey)}}:data:*` })) {
    for (const key of keys) {
      const dump = (await bin.dump(key)) as unknown as Buffer;
      await raw.restore(key, Math.max(Number(await raw.pTTL(key)), 0), dump, { REPLACE: true, IDLETIME: seconds });
    }
  }
}

/** Every key of a tenant, sorted (to show that a command changed nothing). */
async function keysOf(keyPrefix: string): Promise<string[]> {
  const out: string[] = [];
  for await (const keys of raw.scanIterator({ MATCH: `${keyPrefix}*` })) out.push(...keys);
  return out.sort();
}

interface ListedState {
  cacheKey: string;
  modelId: string;
  configHash: string;
  kind: string;
  bytes: number;
  messageCount: number;
  generation: number;
  committedAt: string;
  lastUsed: string | null;
  idleMs: number | null;
  expiresInMs: number | null;
  problem: string | null;
}

describe("kvkeep scan --remote", () => {
  it("lists what stores uploaded: key, model, config, size, messages, commit, last use, expiry — as JSON and as a table", async () => {
    const t = tenantOf();
    const root = await rootWith({ "chat-1": { m1: 3 }, "chat-2": { m1: 5, m2: 2 } }, { auto: 1, remote: t.tier() });
    const local = json<Array<{ cacheKey: string; modelId: string; bytes: number; messageCount: number }>>(await kvkeep(["scan", "--root", root, "--json"]));

    // The root is not read: a missing one is fine.
    const run = await kvkeep(["scan", ...t.args(), "--root", path.join(tempDir(), "absent"), "--json"]);
    expect(run.code).toBe(0);
    const states = json<ListedState[]>(run);
    expect(states.map((s) => [s.cacheKey, s.modelId, s.bytes, s.messageCount]).sort()).toEqual(
      local.map((c) => [c.cacheKey, c.modelId, c.bytes, c.messageCount]).sort(),
    );
    for (const s of states) {
      expect(s).toMatchObject({ configHash: CONFIG, problem: null, idleMs: expect.any(Number), generation: expect.any(Number) });
      expect(s.kind).toBe(s.cacheKey.startsWith("auto-") ? "auto" : "named");
      expect(Date.parse(s.committedAt)).toBeLessThanOrEqual(Date.now());
      expect(Date.parse(s.lastUsed!)).toBeGreaterThanOrEqual(Date.parse(s.committedAt) - 2000);
      expect(s.expiresInMs).toBeGreaterThan(6 * 24 * 3600_000);
    }

    const table = await kvkeep(["scan", ...t.args()]);
    expect(table.code).toBe(0);
    const lines = table.stdout.trimEnd().split("\n");
    expect(lines[0]).toMatch(/^KEY\s+MODEL\s+CONFIG\s+SIZE\s+MESSAGES\s+COMMITTED\s+LAST USE\s+EXPIRES$/);
    expect(lines.find((l) => l.startsWith("chat-2  ") && l.includes(" m2 "))).toMatch(/\s(\d+(\.\d+)? (B|KiB))\s+2\s+(just now|\d+ s ago)\s+(just now|\d+ s ago)\s+in 7 d$/);
    expect(lines.at(-1)).toMatch(new RegExp(`^4 states, \\d+(\\.\\d+)? KiB in redis://127\\.0\\.0\\.1:${server.port} \\(prefix ${t.keyPrefix}\\)$`));
  });

  it("flags a state whose chunks Redis dropped, and says so for an empty tenant", async () => {
    const t = tenantOf();
    await rootWith({ "chat-1": { m1: 3 }, "chat-2": { m1: 2 } }, { remote: t.tier() });
    for (const key of await keysOf(t.keyPrefix)) if (key.includes(`{${keyTag("chat-1")}}:data:`)) await raw.unlink(key);
    const states = json<ListedState[]>(await kvkeep(["scan", ...t.args(), "--json"]));
    expect(states.map((s) => [s.cacheKey, s.problem])).toEqual([
      ["chat-1", expect.stringMatching(/chunks gone/)],
      ["chat-2", null],
    ]);
    expect((await kvkeep(["scan", ...t.args()])).stdout).toMatch(/PROBLEM/);
    const empty = tenantOf();
    const none = await kvkeep(["scan", ...empty.args()]);
    expect(none.code).toBe(0);
    expect(none.stdout.trim()).toBe(`${server.url} (prefix ${empty.keyPrefix}): no states`);
  });
});

describe("kvkeep rm --remote", () => {
  it("removes the local and the remote copy; a tombstone refuses an upload in flight; a second machine then misses", async () => {
    const t = tenantOf();
    const root = await rootWith({ "chat-1": { m1: 3 }, "chat-2": { m1: 4 } }, { remote: t.tier() });
    expect(await resumesOn(t, "chat-1")).toEqual({ hit: true, savedCount: 3 });

    // A machine committed chat-1 just before the rm; its upload is still on its way.
    const inFlight = t.tier();
    const id = { modelId: "m1", fingerprint: null, configHash: CONFIG, cacheKey: "chat-1" };
    const ticket = await inFlight.reserve(id);
    if (!ticket.ok) throw new Error("reserve failed");

    const run = await kvkeep(["rm", "chat-1", "--root", root, ...t.args(), "--json"]);
    expect(run.code).toBe(0);
    const out = json(run);
    expect(out).toMatchObject({
      dryRun: false,
      rootExists: true,
      removed: [{ cacheKey: "chat-1", caches: 1 }],
      missing: [],
      remote: { url: server.url, keyPrefix: t.keyPrefix, cluster: false, removed: [{ cacheKey: "chat-1", states: 1, bytes: out.removed[0].bytes }] },
    });
    expect(await cacheFiles(root)).toEqual([expect.stringMatching(/^chat-2\/m1\//)]);

    const late = await makeState(tempDir(), id, 3000);
    expect(await uploadWith(inFlight, ticket.ticket, late)).toEqual({ outcome: "deleted" });
    await inFlight.close();
    expect((await resumesOn(t, "chat-1")).hit).toBe(false);
    expect(await resumesOn(t, "chat-2")).toEqual({ hit: true, savedCount: 4 });
  });

  it("--dry-run removes nothing; a key only in Redis is found there; a key in neither place exits 1, the others still go", async () => {
    const t = tenantOf();
    await rootWith({ "chat-1": { m1: 3 }, "chat-2": { m1: 2, m2: 5 } }, { remote: t.tier() });
    const elsewhere = await rootWith({}, {}); // this machine never had them
    const before = await keysOf(t.keyPrefix);

    const dry = await kvkeep(["rm", "chat-2", "--root", elsewhere, ...t.args(), "--dry-run"]);
    expect(dry.code).toBe(0);
    expect(dry.stdout).toMatch(/^KEY\s+CACHES\s+SIZE\s+REMOTE\s+REMOTE SIZE$/m);
    expect(dry.stdout).toMatch(/would remove 0 caches \(0 B\) here and 2 remote states \(.+\) from redis:/);
    expect(await keysOf(t.keyPrefix)).toEqual(before);

    const run = await kvkeep(["rm", "chat-9", "chat-2", "--model", "m2", "--root", elsewhere, ...t.args()]);
    expect(run.code).toBe(1);
    expect(run.stderr.trim().split("\n")).toEqual([
      expect.stringMatching(/^kvkeep rm: no caches for "chat-9" with model "m2" under .* or in redis:\/\/.* \(the other key was removed\)\.$/),
    ]);
    expect(run.stdout).toMatch(/removed 0 caches \(0 B\) here and 1 remote state/);
    const left = json<ListedState[]>(await kvkeep(["scan", ...t.args(), "--json"]));
    expect(left.map((s) => [s.cacheKey, s.modelId]).sort()).toEqual([
      ["chat-1", "m1"],
      ["chat-2", "m1"],
    ]);
    // With --remote, a root that does not exist is a machine with no local caches.
    const noRoot = await kvkeep(["rm", "chat-1", "--root", path.join(tempDir(), "absent"), ...t.args(), "--json"]);
    expect(noRoot.code).toBe(0);
    expect(json(noRoot)).toMatchObject({ rootExists: false, removed: [], remote: { removed: [{ cacheKey: "chat-1", states: 1 }] } });
  });

  it("rm --all --remote refuses without --yes off a terminal; with it, empties this tenant and no other", async () => {
    const t = tenantOf();
    const neighbour = tenantOf();
    const root = await rootWith({ "chat-1": { m1: 3 } }, { auto: 1, remote: t.tier() });
    await rootWith({ "chat-1": { m1: 3 } }, { remote: neighbour.tier() });
    const before = await keysOf(t.keyPrefix);

    const refused = await kvkeep(["rm", "--all", "--root", root, ...t.args()]);
    expect(refused.code).toBe(2);
    expect(refused.stderr.trim().split("\n")).toEqual([
      expect.stringMatching(/^kvkeep rm: --all would remove 2 caches \(.+\) under .+ and 2 remote states \(.+\) in redis:.*; stdin is not a terminal, so pass --yes to confirm\. Nothing was removed\.$/),
    ]);
    const refusedJson = await kvkeep(["rm", "--all", "--root", root, ...t.args(), "--json"]);
    expect(jsonError(refusedJson)).toMatchObject({ code: "CONFIRMATION_REQUIRED", exitCode: 2 });
    expect(await cacheFiles(root)).toHaveLength(2);
    expect(await keysOf(t.keyPrefix)).toEqual(before);

    const yes = await kvkeep(["rm", "--all", "--yes", "--root", root, ...t.args(), "--json"]);
    expect(yes.code).toBe(0);
    expect(json(yes).remote.removed).toHaveLength(2);
    expect(await cacheFiles(root)).toEqual([]);
    expect(json<ListedState[]>(await kvkeep(["scan", ...t.args(), "--json"]))).toEqual([]);
    expect(json<ListedState[]>(await kvkeep(["scan", ...neighbour.args(), "--json"]))).toHaveLength(1);
    expect((await kvkeep(["rm", "--all", "--root", root, ...t.args()])).stdout).toMatch(/nothing to remove: no caches under .* and no states in redis:/);
  });

  it.skipIf(!hasScript())("rm --all --remote asks on a terminal, counting both tiers; 'n' removes nothing", async () => {
    const t = tenantOf();
    const root = await rootWith({ "chat-1": { m1: 3 } }, { remote: t.tier() });
    const before = await keysOf(t.keyPrefix);
    const no = await kvkeepOnTerminal(["rm", "--all", "--root", root, ...t.args()], "n\n");
    expect(no.screen).toMatch(/Remove all 1 cache \(.+\) under .+ and 1 remote state \(.+\) in redis:.*\? \[y\/N\]/);
    expect(no.code).toBe(1);
    expect(await cacheFiles(root)).toHaveLength(1);
    expect(await keysOf(t.keyPrefix)).toEqual(before);
  });
});

describe("kvkeep gc --remote", () => {
  it("--dry-run reports both tiers and what it would evict, and changes nothing (not even a last use)", async () => {
    const t = tenantOf();
    const root = await rootWith({ "chat-1": { m1: 3 }, "chat-2": { m1: 2 } }, { auto: 2, remote: t.tier() });
    const autos = json<ListedState[]>(await kvkeep(["scan", ...t.args(), "--json"])).filter((s) => s.kind === "auto");
    await age(t.keyPrefix, autos[0]!.cacheKey, 7200);
    await age(t.keyPrefix, "chat-1", 7200);
    const before = await keysOf(t.keyPrefix);
    const localBefore = await cacheFiles(root);

    const run = await kvkeep(["gc", "--root", root, ...t.args(), "--remote-max-idle", "1h", "--dry-run", "--json"]);
    expect(run.code).toBe(0);
    const out = json(run);
    expect(out).toMatchObject({ dryRun: true, rootExists: true, evicted: [] });
    expect(out.remote).toMatchObject({
      url: server.url,
      keyPrefix: t.keyPrefix,
      states: 4,
      maxIdleMs: 3600_000,
      maxBytes: null,
      server: { policy: "noeviction", maxMemoryBytes: null, nodes: 1, usedMemoryBytes: expect.any(Number) },
      // The idle named chat-1 stays: named states are evicted only with --evict-named.
      evicted: [{ cacheKey: autos[0]!.cacheKey, reason: "idle", bytes: autos[0]!.bytes }],
      freedBytes: autos[0]!.bytes,
      keptBytes: autos[1]!.bytes,
    });
    expect(out.remote.bytes).toBe(out.remote.autoBytes + out.remote.namedBytes);

    const human = await kvkeep(["gc", "--root", root, ...t.args(), "--remote-max-idle", "1h", "--evict-named", "--dry-run"]);
    expect(human.stdout).toMatch(/^remote redis:.* \(prefix kvkeep:cli\d+:\): 4 states, .+ \(auto .+, named .+\); Redis uses .+, no maxmemory limit \(policy noeviction\)$/m);
    expect(human.stdout).toMatch(/would evict 2 remote states \(.+\); .+ of evictable remote states would stay, idle limit 1 h/);

    const noLimits = await kvkeep(["gc", "--root", root, ...t.args(), "--dry-run"]);
    expect(noLimits.stdout).toMatch(/no remote state evicted for age or size without --remote-max-bytes or --remote-max-idle: each expires by its TTL \(7 d after its last upload or download .*the soonest here in 7 d\), and Redis evicts by its maxmemory policy \(noeviction\)/);

    expect(await keysOf(t.keyPrefix)).toEqual(before);
    expect(await cacheFiles(root)).toEqual(localBefore);
    // Still idle: reading the listing is not a use.
    const after = json<ListedState[]>(await kvkeep(["scan", ...t.args(), "--json"]));
    expect(after.find((s) => s.cacheKey === "chat-1")!.idleMs).toBeGreaterThanOrEqual(7200_000);
  });

  it("evicts remote auto states past the budget, keeps named ones without --evict-named; a second machine then misses", async () => {
    const t = tenantOf();
    const root = await rootWith({ "chat-1": { m1: 3 } }, { auto: 2, remote: t.tier() });
    const run = await kvkeep(["gc", "--root", root, ...t.args(), "--remote-max-bytes", "0", "--json"]);
    expect(run.code).toBe(0);
    const out = json(run);
    expect(out.remote.evicted.map((e: { reason: string }) => e.reason)).toEqual(["budget", "budget"]);
    expect(out.remote).toMatchObject({ maxBytes: 0, keptBytes: 0 });
    const left = json<ListedState[]>(await kvkeep(["scan", ...t.args(), "--json"]));
    expect(left.map((s) => s.cacheKey)).toEqual(["chat-1"]);
    // The local sweep ran too (its defaults keep these small caches).
    expect(await cacheFiles(root)).toHaveLength(3);

    const named = await kvkeep(["gc", "--root", root, ...t.args(), "--remote-max-bytes", "0", "--evict-named"]);
    expect(named.stdout).toMatch(/^chat-1\s+m1\s+.+\s+over budget$/m);
    expect(named.stdout).toMatch(/evicted 1 remote state \(.+\); 0 B of evictable remote states kept, budget 0 B/);
    expect((await resumesOn(t, "chat-1")).hit).toBe(false);
  });
});

describe("a Redis that is down or does not answer", () => {
  it("scan, rm and gc exit 1 with one REMOTE_UNAVAILABLE line, the password hidden, and remove nothing", async () => {
    const down = await startRedis();
    const t = tenantOf(() => `redis://default:s3cret@127.0.0.1:${down.port}`);
    const root = await rootWith({ "chat-1": { m1: 3 } }, { remote: createRedisTier({ url: down.url, keyPrefix: t.keyPrefix, timeoutMs: TEST_TIMEOUT_MS }) });
    await down.kill();
    for (const args of [["scan"], ["rm", "chat-1", "--root", root], ["rm", "--all", "--yes", "--root", root], ["gc", "--root", root, "--remote-max-bytes", "0"]]) {
      const run = await kvkeep([...args, ...t.args()]);
      expect(run.code, args.join(" ")).toBe(1);
      expect(run.stdout, args.join(" ")).toBe("");
      expect(run.stderr.trim().split("\n"), args.join(" ")).toEqual([
        expect.stringMatching(new RegExp(`^kvkeep ${args[0]}: cannot reach Redis at redis://default:\\*\\*\\*@127\\.0\\.0\\.1:${down.port}/? \\(prefix ${t.keyPrefix}\\): .*ECONNREFUSED`)),
      ]);
      expect(run.stderr).not.toContain("s3cret");
      const asJson = await kvkeep([...args, ...t.args(), "--json"]);
      expect(jsonError(asJson)).toMatchObject({ code: "REMOTE_UNAVAILABLE", exitCode: 1 });
    }
    expect(await cacheFiles(root)).toHaveLength(1);
    await down.stop();
  });

  it("a server that accepts the connection and never answers is given up at --remote-timeout", async () => {
    const silent = net.createServer((socket) => socket.on("error", () => {}));
    await new Promise<void>((resolve) => silent.listen(0, "127.0.0.1", resolve));
    const port = (silent.address() as net.AddressInfo).port;
    try {
      const run = await kvkeep(["scan", "--remote", `redis://127.0.0.1:${port}`, "--remote-timeout", "500ms", "--json"]);
      expect(run.code).toBe(1);
      expect(jsonError(run)).toMatchObject({ code: "REMOTE_UNAVAILABLE", message: expect.stringMatching(/cannot reach Redis .*: connecting took longer than 500 ms/) });
    } finally {
      silent.close();
    }
  });
});

describe("--remote arguments", () => {
  it("are strict: a bad URL or prefix, or an option that needs --remote without it, exit 2 and touch nothing", async () => {
    const root = await rootWith({ "chat-1": { m1: 3 } });
    const cases: Array<[string[], RegExp]> = [
      [["rm", "chat-1", "--remote", "http://127.0.0.1:6379"], /--remote must be a Redis URL/],
      [["rm", "chat-1", "--remote", "redis://u:pw@[bad"], /--remote must be a Redis URL .*"redis:\/\/u:\*\*\*@\[bad"/],
      [["rm", "chat-1", "--remote-prefix", "kvkeep:a:"], /--remote-prefix goes with --remote URL/],
      [["gc", "--remote-max-bytes", "1G"], /--remote-max-bytes goes with --remote URL/],
      [["rm", "chat-1", "--remote", "redis://127.0.0.1:1", "--remote-prefix", "a b{"], /--remote-prefix must be/],
      [["scan", "--remote", "redis://127.0.0.1:1", "--remote-timeout", "5"], /--remote-timeout must be a duration/],
      [["scan", "--remote", "redis://127.0.0.1:1", "--max-bytes", "1G"], /--max-bytes draws the local budget bar/],
    ];
    for (const [args, message] of cases) {
      const run = await kvkeep([...args, "--root", root]);
      expect(run.code, args.join(" ")).toBe(2);
      expect(run.stderr.trim().split("\n"), args.join(" ")).toEqual([expect.stringMatching(message)]);
      expect(run.stderr).not.toContain("pw@");
    }
    expect(await cacheFiles(root)).toHaveLength(1);
  });

  it("help shows the Redis options with examples", async () => {
    for (const command of ["scan", "rm", "gc"]) {
      const help = await kvkeep([command, "--help"]);
      expect(help.stdout, command).toMatch(/--remote URL\s+the shared Redis tier:/);
      expect(help.stdout, command).toMatch(/--remote-prefix PREFIX/);
      expect(help.stdout, command).toMatch(/--remote-timeout DURATION/);
      expect(help.stdout, command).toMatch(/kvkeep \w+ .*--remote redis:\/\//);
    }
    expect((await kvkeep(["gc", "--help"])).stdout).toMatch(/--remote-max-bytes SIZE/);
  });
});

describe("Redis Cluster", () => {
  let cluster: RedisCluster;
  beforeAll(async () => {
    cluster = await startCluster();
  });
  afterAll(async () => {
    await cluster?.stop();
  });

  it("scan, rm and gc --remote given one node's URL work on every node of the cluster", async () => {
    const keyPrefix = "kvkeep:cluster-cli:";
    const client = createCluster({ rootNodes: cluster.rootNodes });
    const keys = Object.fromEntries(Array.from({ length: 6 }, (_, i) => [`chat-${i}`, { m1: i + 1 }]));
    const root = await rootWith(keys, { remote: createRedisTier({ client, keyPrefix, chunkBytes: 4096, timeoutMs: TEST_TIMEOUT_MS }) });
    await client.close(); // the store closed its tier; the client passed in is ours
    const args = ["--remote", cluster.nodes[1]!.url, "--remote-prefix", keyPrefix];

    const states = json<ListedState[]>(await kvkeep(["scan", ...args, "--json"]));
    expect(states.map((s) => [s.cacheKey, s.messageCount]).sort()).toEqual(Object.entries(keys).map(([k, m]) => [k, m.m1]).sort());

    const rm = await kvkeep(["rm", "chat-0", "chat-5", "--root", root, ...args, "--json"]);
    expect(rm.code).toBe(0);
    expect(json(rm).remote).toMatchObject({ cluster: true, removed: [{ cacheKey: "chat-0", states: 1 }, { cacheKey: "chat-5", states: 1 }] });

    const gc = await kvkeep(["gc", "--root", root, ...args, "--dry-run"]);
    expect(gc.stdout).toMatch(/4 states, .*\(policy noeviction, 3 masters\)/);
    expect(json<ListedState[]>(await kvkeep(["scan", ...args, "--json"]))).toHaveLength(4);
  });
});

describe("without the optional redis package", () => {
  it("the CLI runs, and --remote says to install redis (exit 1)", async () => {
    // An installed kvkeep whose app has no redis: the built package, node_modules without it.
    const app = await fs.mkdtemp(path.join(os.tmpdir(), "kvkeep-no-redis-"));
    await fs.cp(path.join(repoRoot, "dist"), path.join(app, "dist"), { recursive: true });
    await fs.copyFile(path.join(repoRoot, "package.json"), path.join(app, "package.json"));
    await fs.symlink(path.join(repoRoot, "build-cmake"), path.join(app, "build-cmake"));
    await fs.mkdir(path.join(app, "node_modules"));
    for (const entry of await fs.readdir(path.join(repoRoot, "node_modules"))) {
      if (entry === "redis" || entry === "@redis") continue;
      await fs.symlink(path.join(repoRoot, "node_modules", entry), path.join(app, "node_modules", entry));
    }
    const bin = path.join(app, "dist", "cli", "bin.js");
    const root = await rootWith({ "chat-1": { m1: 3 } });
    const run = (args: string[]) => execFileSync(process.execPath, [bin, ...args], { encoding: "utf8", stdio: "pipe" });
    expect(run(["scan", "--root", root])).toMatch(/^chat-1\s+m1\s/m);
    let failed: { status: number; stderr: string } | null = null;
    try {
      run(["scan", "--remote", server.url, "--json"]);
    } catch (error) {
      failed = error as { status: number; stderr: string };
    }
    expect(failed?.status).toBe(1);
    expect(JSON.parse(failed!.stderr).error).toMatchObject({ code: "REMOTE_CLIENT_MISSING", message: expect.stringMatching(/npm install redis/) });
    await fs.rm(app, { recursive: true, force: true });
  });
});

function hasScript(): boolean {
  try {
    execFileSync("script", ["--version"], { stdio: "pipe" });
    return true;
  } catch {
    return false;
  }
}
