/**
 * The Redis tier against real redis-server processes — one single instance and one
 * 3-node Redis Cluster — with the same behaviour pinned on both: uploads that become
 * visible whole or not at all, the newer commit winning, tombstones, prefix lookups,
 * and altered or missing chunks read as a miss.
 */
import { createClient, createCluster, RESP_TYPES } from "redis";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { messageKeyChain } from "../../src/keys/auto-key.js";
import { createRedisTier, type RedisTier, type RemoteListing } from "../../src/remote/redis/index.js";
import { scopeTag } from "../../src/remote/redis/keys.js";
import { parseRecord } from "../../src/remote/record.js";
import { tempDir } from "../helpers/temp-root.js";
import { type RedisCluster, type RedisServer, startCluster, startRedis } from "./helpers/redis-server.js";
import { cacheId, exists, fetchBytes, makeState, reserveAndUpload, recordingLogger, TEST_TIMEOUT_MS, uploadWith } from "./helpers/states.js";

/** What a test needs of a deployment: a tier factory and raw commands to tamper with. */
interface Deployment {
  name: string;
  tier(options?: { keyPrefix?: string; chunkBytes?: number; logger?: ReturnType<typeof recordingLogger> }): RedisTier;
  raw: {
    hGet(key: string, field: string): Promise<string | null>;
    hGetBin(key: string, field: string): Promise<Buffer | null>;
    hSet(key: string, field: string, value: string | Buffer): Promise<unknown>;
    hDel(key: string, field: string): Promise<unknown>;
    ttl(key: string): Promise<number>;
    exists(key: string): Promise<boolean>;
    /** Make a key look unused for `seconds` (DUMP + RESTORE … IDLETIME, keeping its expiry). */
    age(key: string, seconds: number): Promise<void>;
    unlink(key: string): Promise<unknown>;
  };
  close(): Promise<void>;
}

/** Tampering commands over a node-redis client or cluster (their command methods are alike). */
function rawCommands(client: object): Deployment["raw"] {
  const raw = client as unknown as ReturnType<typeof createClient>;
  const bin = raw.withTypeMapping({ [RESP_TYPES.BLOB_STRING]: Buffer });
  return {
    hGet: (k, f) => raw.hGet(k, f) as Promise<string | null>,
    hGetBin: (k, f) => bin.hGet(k, f) as Promise<Buffer | null>,
    hSet: (k, f, v) => raw.hSet(k, f, v),
    hDel: (k, f) => raw.hDel(k, f),
    ttl: (k) => raw.ttl(k) as Promise<number>,
    exists: async (k) => Number(await raw.exists(k)) === 1,
    age: async (k, seconds) => {
      const dump = (await bin.dump(k)) as unknown as Buffer;
      const pttl = Number(await raw.pTTL(k));
      await raw.restore(k, Math.max(pttl, 0), dump, { REPLACE: true, IDLETIME: seconds });
    },
    unlink: (k) => raw.unlink(k),
  };
}

async function singleDeployment(): Promise<Deployment> {
  const server: RedisServer = await startRedis();
  const raw = await createClient({ url: server.url }).on("error", () => {}).connect();
  const tiers: RedisTier[] = [];
  return {
    name: "single instance",
    tier: (options = {}) => {
      const tier = createRedisTier({ url: server.url, timeoutMs: TEST_TIMEOUT_MS, ...options });
      tiers.push(tier);
      return tier;
    },
    raw: rawCommands(raw),
    close: async () => {
      for (const t of tiers) await t.close();
      raw.destroy();
      await server.stop();
    },
  };
}

async function clusterDeployment(): Promise<Deployment> {
  const cluster: RedisCluster = await startCluster();
  const raw = await createCluster({ rootNodes: cluster.rootNodes }).on("error", () => {}).connect();
  const clients: Array<{ close(): Promise<unknown> }> = [];
  const tiers: RedisTier[] = [];
  return {
    name: "3-node cluster",
    tier: (options = {}) => {
      const client = createCluster({ rootNodes: cluster.rootNodes });
      clients.push(client);
      const tier = createRedisTier({ client, timeoutMs: TEST_TIMEOUT_MS, ...options });
      tiers.push(tier);
      return tier;
    },
    raw: rawCommands(raw),
    close: async () => {
      for (const t of tiers) await t.close();
      for (const c of clients) await c.close().catch(() => {});
      await raw.close();
      await cluster.stop();
    },
  };
}

describe.each([
  ["single instance", singleDeployment],
  ["3-node cluster", clusterDeployment],
])("Redis tier on a %s", (_name, start) => {
  let deployment: Deployment;
  let tier: RedisTier;
  beforeAll(async () => {
    deployment = await start();
    tier = deployment.tier({ chunkBytes: 64 * 1024 });
  });
  afterAll(async () => {
    await deployment?.close();
  });

  /** The record as stored (to find its data key). */
  async function storedRecord(t: RedisTier, id: ReturnType<typeof cacheId>) {
    const text = await deployment.raw.hGet(t.keys.heads(id.cacheKey), scopeTag(id));
    if (text === null) return null;
    const record = parseRecord(text, id);
    if ("error" in record) throw new Error(record.error);
    return record;
  }

  it("fetches exactly the bytes a commit uploaded, over many chunks and a short last one", async () => {
    const dir = tempDir();
    const file = await makeState(dir, cacheId("round-trip"), 64 * 1024 * 5 + 123);
    expect(await reserveAndUpload(tier, file)).toEqual({ outcome: "published", bytes: file.bytes.length });
    const got = await fetchBytes(tier, dir, file.state.id);
    expect(got.hit).toBe(true);
    expect(got.bytes!.equals(file.bytes)).toBe(true);
    const other = await fetchBytes(tier, dir, cacheId("never-uploaded"));
    expect(other).toMatchObject({ hit: false, reason: "absent" });
    expect(await exists(other.temp)).toBe(false);
  });

  it("returns the state's identity and counts with a hit, and only for the exact model, fingerprint and config", async () => {
    const dir = tempDir();
    const id = cacheId("identity");
    const file = await makeState(dir, id, 10_000, { messageCount: 7, tokenCount: 321 });
    await reserveAndUpload(tier, file);
    const got = await tier.fetchTo(id, `${dir}/x.tmp`);
    expect(got).toMatchObject({ hit: true, state: { id, size: 10_000, xxh64: file.state.xxh64, messageCount: 7, tokenCount: 321 } });
    for (const other of [{ fingerprint: "fp-2" }, { fingerprint: null }, { modelId: "other" }, { configHash: "cfgffffffffffffff" }]) {
      expect((await fetchBytes(tier, dir, cacheId("identity", other))).hit).toBe(false);
    }
  });

  it("lets the newer commit win whatever order the uploads finish in, and never mixes their chunks", async () => {
    const dir = tempDir();
    const id = cacheId("race");
    const older = await makeState(dir, id, 64 * 1024 * 8);
    const newer = await makeState(dir, id, 64 * 1024 * 8);
    const first = await tier.reserve(id);
    const second = await tier.reserve(id);
    if (!first.ok || !second.ok) throw new Error("reserve failed");
    expect(second.ticket.generation).toBeGreaterThan(first.ticket.generation);
    // Both upload at once, chunk streams interleaving; then the older one again after the newer published.
    const [a, b] = await Promise.all([uploadWith(tier, first.ticket, older), uploadWith(tier, second.ticket, newer)]);
    expect(b.outcome).toBe("published");
    expect(["published", "superseded"]).toContain(a.outcome);
    expect(await uploadWith(tier, first.ticket, older)).toEqual({ outcome: "superseded" });
    const got = await fetchBytes(tier, dir, id);
    expect(got.bytes!.equals(newer.bytes)).toBe(true);
  });

  it("refuses an upload ordered before a delete (a tombstone), and takes one ordered after it", async () => {
    const dir = tempDir();
    const id = cacheId("tombstone");
    const published = await makeState(dir, id, 50_000);
    await reserveAndUpload(tier, published);
    const inFlight = await tier.reserve(id); // a commit made before the delete, uploading late
    expect(await tier.remove({ cacheKey: "tombstone" })).toEqual({ ok: true, removed: 1 });
    expect((await fetchBytes(tier, dir, id)).hit).toBe(false);
    if (!inFlight.ok) throw new Error("reserve failed");
    const late = await makeState(dir, id, 50_000);
    expect(await uploadWith(tier, inFlight.ticket, late)).toEqual({ outcome: "deleted" });
    expect((await fetchBytes(tier, dir, id)).hit).toBe(false);
    const after = await makeState(dir, id, 50_000);
    expect((await reserveAndUpload(tier, after)).outcome).toBe("published");
    expect((await fetchBytes(tier, dir, id)).bytes!.equals(after.bytes)).toBe(true);
  });

  it("deletes one model's state of a key and keeps the others'", async () => {
    const dir = tempDir();
    const a = await makeState(dir, cacheId("per-model", { modelId: "model-a" }), 1000);
    const b = await makeState(dir, cacheId("per-model", { modelId: "model-b" }), 1000);
    await reserveAndUpload(tier, a);
    await reserveAndUpload(tier, b);
    expect(await tier.remove({ cacheKey: "per-model", modelId: "model-a" })).toEqual({ ok: true, removed: 1 });
    expect((await fetchBytes(tier, dir, a.state.id)).hit).toBe(false);
    expect((await fetchBytes(tier, dir, b.state.id)).hit).toBe(true);
  });

  it("uploads identical bytes once: a re-commit of the same state sends no chunk", async () => {
    const dir = tempDir();
    const file = await makeState(dir, cacheId("dedupe"), 200_000);
    await reserveAndUpload(tier, file);
    expect(await reserveAndUpload(tier, { ...file, state: { ...file.state, messageCount: 9 } })).toEqual({ outcome: "published", bytes: 0 });
    const got = await tier.fetchTo(file.state.id, `${dir}/d.tmp`);
    expect(got).toMatchObject({ hit: true, state: { messageCount: 9 } });
  });

  it("reads a state with a flipped byte as a miss: logged once, temp file removed, record dropped", async () => {
    const dir = tempDir();
    const logger = recordingLogger();
    const reader = deployment.tier({ logger });
    const id = cacheId("flipped");
    const file = await makeState(dir, id, 64 * 1024 * 3);
    await reserveAndUpload(tier, file);
    const record = (await storedRecord(tier, id))!;
    const dataKey = tier.keys.data(id, record.xxh64, record.dataGeneration);
    const chunk = (await deployment.raw.hGetBin(dataKey, "1"))!;
    chunk[1234] = chunk[1234]! ^ 0x01;
    await deployment.raw.hSet(dataKey, "1", chunk);
    const got = await fetchBytes(reader, dir, id);
    expect(got).toMatchObject({ hit: false, reason: "corrupt" });
    expect(await exists(got.temp)).toBe(false);
    expect(logger.lines.filter((l) => l.level === "warn" && l.line.includes("remote state is broken"))).toHaveLength(1);
    expect(reader.stats().corrupt).toBe(1);
    expect(await storedRecord(tier, id)).toBeNull();
  });

  it("reads a state with a missing or truncated chunk as a miss", async () => {
    const dir = tempDir();
    for (const damage of ["delete", "truncate"] as const) {
      const id = cacheId(`damaged-${damage}`);
      const file = await makeState(dir, id, 64 * 1024 * 3);
      await reserveAndUpload(tier, file);
      const record = (await storedRecord(tier, id))!;
      const dataKey = tier.keys.data(id, record.xxh64, record.dataGeneration);
      if (damage === "delete") await deployment.raw.hDel(dataKey, "2");
      else await deployment.raw.hSet(dataKey, "0", (await deployment.raw.hGetBin(dataKey, "0"))!.subarray(0, 100));
      const got = await fetchBytes(tier, dir, id);
      expect(got).toMatchObject({ hit: false, reason: "corrupt" });
      expect(await exists(got.temp)).toBe(false);
    }
  });

  it("refuses a record filed under another cache's key, and one that is not a record", async () => {
    const dir = tempDir();
    const victim = cacheId("victim");
    const file = await makeState(dir, cacheId("source"), 5000);
    await reserveAndUpload(tier, file);
    const text = (await deployment.raw.hGet(tier.keys.heads("source"), scopeTag(file.state.id)))!;
    await deployment.raw.hSet(tier.keys.heads("victim"), scopeTag(victim), text);
    expect(await fetchBytes(tier, dir, victim)).toMatchObject({ hit: false, reason: "corrupt" });
    const garbage = cacheId("garbage");
    await deployment.raw.hSet(tier.keys.heads("garbage"), scopeTag(garbage), '{"format":1,"cacheKey":"../../etc"}');
    expect(await fetchBytes(tier, dir, garbage)).toMatchObject({ hit: false, reason: "corrupt" });
  });

  it("finds the remote state covering the longest prefix of a history, within its scope only", async () => {
    const dir = tempDir();
    const history = [
      { role: "system", content: "Be brief." },
      { role: "user", content: "Hi" },
      { role: "assistant", content: "Hello" },
      { role: "user", content: "Tell me more" },
      { role: "assistant", content: "More." },
    ];
    /** Keys 1…n of a history, as a manifest chain holds them. */
    const keysOf = (h: typeof history): string[] => messageKeyChain(h).keys().slice(1);
    const chain = keysOf(history);
    const short = await makeState(dir, cacheId("short-one"), 3000, { chain: chain.slice(0, 3), messageCount: 3 });
    const long = await makeState(dir, cacheId("long-one"), 4000, { chain, messageCount: 5 });
    await reserveAndUpload(tier, short);
    await reserveAndUpload(tier, long);
    const scope = { modelId: "tiny", fingerprint: "fp-1", configHash: "cfg0123456789abc" };
    // A history that follows the long one's first four messages, then differs.
    const query = keysOf([...history.slice(0, 4), { role: "assistant", content: "Something else" }, { role: "user", content: "?" }]);
    expect(await tier.lookupPrefix(scope, query)).toMatchObject({ cacheKey: "long-one", commonMessages: 4, messageCount: 5, bytes: 4000 });
    expect(await tier.lookupPrefix(scope, keysOf(history.slice(0, 3)))).toMatchObject({ commonMessages: 3 });
    expect(await tier.lookupPrefix(scope, query, { exactAncestor: true })).toMatchObject({ cacheKey: "short-one", commonMessages: 3 });
    expect(await tier.lookupPrefix(scope, query, { minMessages: 5 })).toBeNull();
    expect(await tier.lookupPrefix({ ...scope, fingerprint: "fp-2" }, query)).toBeNull();
    expect(await tier.lookupPrefix(scope, keysOf([{ role: "system", content: "Other" }]))).toBeNull();
    // Once the long state is deleted, the next best is the short one.
    await tier.remove({ cacheKey: "long-one" });
    expect(await tier.lookupPrefix(scope, query)).toMatchObject({ cacheKey: "short-one", commonMessages: 3 });
  });

  it("delete of everything removes every state and refuses uploads ordered before it", async () => {
    const dir = tempDir();
    const mine = deployment.tier({ keyPrefix: "kvkeep:wipe:" });
    const neighbour = deployment.tier({ keyPrefix: "kvkeep:wipe-neighbour:" });
    const a = await makeState(dir, cacheId("a"), 2000);
    const b = await makeState(dir, cacheId("b"), 2000);
    await reserveAndUpload(mine, a);
    await reserveAndUpload(neighbour, b);
    const inFlight = await mine.reserve(b.state.id);
    expect(await mine.remove({ all: true })).toEqual({ ok: true, removed: 1 });
    expect((await fetchBytes(mine, dir, a.state.id)).hit).toBe(false);
    if (!inFlight.ok) throw new Error("reserve failed");
    expect(await uploadWith(mine, inFlight.ticket, b)).toEqual({ outcome: "deleted" });
    expect((await fetchBytes(mine, dir, b.state.id)).hit).toBe(false);
    expect((await fetchBytes(neighbour, dir, b.state.id)).hit).toBe(true);
  });

  it("lists every published state with its identity", async () => {
    const dir = tempDir();
    const lister = deployment.tier({ keyPrefix: "kvkeep:list:" });
    const files = [await makeState(dir, cacheId("l1"), 100), await makeState(dir, cacheId("l2", { modelId: "m2" }), 200)];
    for (const f of files) await reserveAndUpload(lister, f);
    const listed = [];
    for await (const s of lister.list()) listed.push(s);
    expect(listed.map((s) => [s.id.cacheKey, s.id.modelId, s.size]).sort()).toEqual([
      ["l1", "tiny", 100],
      ["l2", "m2", 200],
    ]);
  });

  it("lists a state's use without making it a use: idle time, expiry, and whether its chunks are all there", async () => {
    const dir = tempDir();
    const lister = deployment.tier({ keyPrefix: "kvkeep:use:" });
    const [used, idle, gone] = [cacheId("used"), cacheId("idle"), cacheId("gone")];
    for (const id of [used, idle, gone]) await reserveAndUpload(lister, await makeState(dir, id, 3000));
    const dataKey = async (id: ReturnType<typeof cacheId>) => {
      const r = (await storedRecord(lister, id))!;
      return lister.keys.data(id, r.xxh64, r.dataGeneration);
    };
    await deployment.raw.age(await dataKey(used), 3600);
    await deployment.raw.age(await dataKey(idle), 3600);
    await deployment.raw.unlink(await dataKey(gone));
    const listing = async () => {
      const out = new Map<string, RemoteListing>();
      for await (const s of lister.list()) out.set(s.id.cacheKey, s);
      return out;
    };
    const first = await listing();
    expect(first.get("idle")).toMatchObject({ whole: true, idleMs: expect.any(Number), expiresInMs: expect.any(Number) });
    expect(first.get("idle")!.idleMs).toBeGreaterThanOrEqual(3600_000);
    expect(first.get("idle")!.expiresInMs).toBeGreaterThan(6 * 24 * 3600_000);
    expect(first.get("gone")).toMatchObject({ whole: false, idleMs: null, expiresInMs: null, size: 3000 });
    // Listing twice is not a use; a download is.
    expect((await fetchBytes(lister, dir, used)).hit).toBe(true);
    const second = await listing();
    expect(second.get("idle")!.idleMs).toBeGreaterThanOrEqual(3600_000);
    expect(second.get("used")!.idleMs).toBeLessThan(3600_000);
    // One key's states only, without walking the key space.
    const one = [];
    for await (const s of lister.list({ cacheKey: "idle" })) one.push(s.id.cacheKey);
    expect(one).toEqual(["idle"]);
  });

  it("evicts a state only while it is the listed commit, data included, and leaves no tombstone", async () => {
    const dir = tempDir();
    const t = deployment.tier({ keyPrefix: "kvkeep:evict:" });
    const id = cacheId("e1");
    await reserveAndUpload(t, await makeState(dir, id, 2000));
    const listed = [];
    for await (const s of t.list()) listed.push(s);
    const older = listed[0]!;
    const newer = await makeState(dir, id, 2500);
    await reserveAndUpload(t, newer);
    // A commit published since the listing is newer use: kept.
    expect(await t.evict(older)).toEqual({ ok: true, evicted: false });
    expect((await fetchBytes(t, dir, id)).bytes).toEqual(newer.bytes);
    const current = (await storedRecord(t, id))!;
    expect(await t.evict(current)).toEqual({ ok: true, evicted: true });
    expect(await deployment.raw.exists(t.keys.data(id, current.xxh64, current.dataGeneration))).toBe(false);
    expect((await fetchBytes(t, dir, id)).hit).toBe(false);
    // Eviction is not a delete: the next commit uploads it again.
    expect(await reserveAndUpload(t, newer)).toEqual({ outcome: "published", bytes: 2500 });
  });

  it("reports the server's memory use, limit and eviction policy", async () => {
    const got = await tier.serverUsage();
    expect(got).toEqual({
      ok: true,
      usage: { usedMemoryBytes: expect.any(Number), maxMemoryBytes: null, policy: "noeviction", nodes: deployment.name === "3-node cluster" ? 3 : 1 },
    });
    if (got.ok) expect(got.usage.usedMemoryBytes).toBeGreaterThan(0);
  });

  it("gives a published state the tier's expiry (ttlSeconds)", async () => {
    const dir = tempDir();
    const id = cacheId("ttl");
    const file = await makeState(dir, id, 5000);
    await reserveAndUpload(tier, file);
    const record = (await storedRecord(tier, id))!;
    const ttl = await deployment.raw.ttl(tier.keys.data(id, record.xxh64, record.dataGeneration));
    expect(ttl).toBeGreaterThan(7 * 24 * 3600 - 60);
    expect(ttl).toBeLessThanOrEqual(7 * 24 * 3600);
  });
});

describe("Redis tier listing under an LFU eviction policy", () => {
  it("lists states with their idle time unknown (Redis tracks no idle time under LFU)", async () => {
    const server = await startRedis({ args: ["--maxmemory-policy", "allkeys-lfu"] });
    const tier = createRedisTier({ url: server.url, timeoutMs: TEST_TIMEOUT_MS });
    try {
      await reserveAndUpload(tier, await makeState(tempDir(), cacheId("lfu"), 1000));
      const listed = [];
      for await (const s of tier.list()) listed.push(s);
      expect(listed).toEqual([expect.objectContaining({ whole: true, idleMs: null, size: 1000 })]);
      expect(await tier.serverUsage()).toMatchObject({ ok: true, usage: { policy: "allkeys-lfu" } });
    } finally {
      await tier.close();
      await server.stop();
    }
  });
});

describe("Redis tier connections", () => {
  it("a model load holding the event loop while the tier connects logs nothing: the client's connect timeout was transient", async () => {
    const server = await startRedis();
    const logger = recordingLogger();
    // connectTimeout is max(1 s, 5 × timeoutMs) = 2 s: held past it, node-redis's connect timer
    // fires before the socket's connect event is seen, reports "Connection timeout" and reconnects.
    const tier = createRedisTier({ url: server.url, timeoutMs: 400, logger });
    try {
      const until = Date.now() + 2500;
      while (Date.now() < until) {
        // a synchronous model load
      }
      let answered = false;
      for (let i = 0; i < 50 && !answered; i++) {
        answered = (await tier.serverUsage()).ok;
        if (!answered) await new Promise((r) => setTimeout(r, 100));
      }
      expect(answered).toBe(true);
      expect(logger.lines).toEqual([]);
    } finally {
      await tier.close();
      await server.stop();
    }
  });

  it("while Redis is down, the outage is warned about once, and the client's errors go to debug", async () => {
    const server = await startRedis();
    const logger = recordingLogger();
    const tier = createRedisTier({ url: server.url, timeoutMs: 200, logger });
    try {
      expect((await tier.serverUsage()).ok).toBe(true);
      await server.kill();
      for (let i = 0; i < 4; i++) await tier.serverUsage();
      await new Promise((r) => setTimeout(r, 300));
      expect(logger.lines.filter((l) => l.level === "warn")).toEqual([{ level: "warn", line: expect.stringContaining("remote redis tier unreachable") }]);
      expect(logger.lines.some((l) => l.level === "debug" && l.line.includes("redis client error"))).toBe(true);
    } finally {
      await tier.close();
      await server.stop();
    }
  });

  it("a tier closed while its connections are still being made leaves none open (the process can exit)", async () => {
    const server = await startRedis();
    try {
      for (let i = 0; i < 5; i++) {
        const tier = createRedisTier({ url: server.url, timeoutMs: TEST_TIMEOUT_MS });
        await tier.close();
      }
      // A leaked socket finishes its handshake and shows up as a client of the server.
      await new Promise((r) => setTimeout(r, 300));
      const clients = (await server.cli("client", "list")).split("\n").filter((line) => line.includes("cmd=") && !/cmd=client\|list/.test(line));
      expect(clients).toEqual([]);
    } finally {
      await server.stop();
    }
  });
});
