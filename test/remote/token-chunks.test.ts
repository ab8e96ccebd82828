/**
 * Chunked caches through the Redis tier (docs/chunks-format.md), real redis-server, roots standing
 * for machines, real sessions committing sequence states (written from the layout table)
 * through the memory handoff: an upload sends only the token chunks the tier lacks; a
 * read-through on another machine fetches only the chunks its root lacks, verifies each, and
 * the state it joins is byte for byte the one committed; a whole-file reader never takes the
 * tail for a state; a chunk altered in Redis makes the state a miss; `kvkeep gc --remote`
 * removes the chunks no state names once unused for an hour (single node and a cluster).
 */
import { promises as fs } from "node:fs";
import { createClient, createCluster, RESP_TYPES } from "redis";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { listChunkFiles } from "../../src/chunkfiles/collect.js";
import { openKvCacheStore, type KvCacheStore } from "../../src/index.js";
import { loadNativeFs } from "../../src/native/index.js";
import { createRedisTier } from "../../src/remote/redis/index.js";
import { buildState } from "../chunks/synthetic-state.js";
import { configHash, MODEL } from "../index/helpers.js";
import { json, kvkeep } from "../cli/helpers.js";
import { tempDir } from "../helpers/temp-root.js";
import { type RedisCluster, type RedisServer, startCluster, startRedis } from "./helpers/redis-server.js";
import { TEST_TIMEOUT_MS } from "./helpers/states.js";

let server: RedisServer;
const connectRaw = (url: string) => createClient({ url }).on("error", () => {}).connect();
let raw: Awaited<ReturnType<typeof connectRaw>>;
beforeAll(async () => {
  server = await startRedis();
  raw = await connectRaw(server.url);
});
afterAll(async () => {
  raw?.destroy();
  await server?.stop();
});

const CHUNK_TOKENS = 16;
const CHUNKING = { attentionRotation: "default", sequences: 1, chunkTokens: CHUNK_TOKENS };
const layers = [{ kType: 1, kRowBytes: 32, vType: 1, vRowBytes: 32 }];
/** A state of `tokens` tokens; two with different salts share their first `saltFrom` tokens. */
const state = (tokens: number, salt = 0, saltFrom = 0): Buffer => buildState({ tokenCount: tokens, vTrans: false, layers, salt, saltFrom });

let tenant = 0;
const newCluster = (rootNodes: Array<{ url: string }>) => createCluster({ rootNodes });
const clusterClients: Array<ReturnType<typeof newCluster>> = [];

/** A machine: a store on a root of its own, on the shared Redis (the tier counts its chunk fetches). */
function machines(options: { ttlSeconds?: number | null; cluster?: RedisCluster } = {}) {
  const keyPrefix = `kvkeep:tc${++tenant}:`;
  const { cluster, ...tierOptions } = options;
  return (root = tempDir()) => {
    // A cluster client passed in is the caller's to close (the tier leaves it open).
    let connection: { client: ReturnType<typeof newCluster> } | { url: string } = { url: server.url };
    if (cluster) {
      const client = newCluster(cluster.rootNodes);
      clusterClients.push(client);
      connection = { client };
    }
    const tier = createRedisTier({ ...connection, keyPrefix, chunkBytes: 4096, timeoutMs: TEST_TIMEOUT_MS, ...tierOptions });
    const counts = { getChunk: 0 };
    const getChunk = tier.getChunk.bind(tier);
    tier.getChunk = (context, id) => {
      counts.getChunk++;
      return getChunk(context, id);
    };
    return { store: openKvCacheStore({ root, remote: tier }), root, counts, keyPrefix };
  };
}

async function commitChunked(store: KvCacheStore, key: string, bytes: Buffer): Promise<void> {
  const session = store.createSession(MODEL, { fingerprint: "fp", chunks: CHUNKING });
  expect(session.layout).toBe("chunked");
  const turn = await session.beginTurn({ kind: "custom", customKey: key, configHash, primeIfMissing: async (p) => fs.writeFile(p, state(0)) });
  await fs.writeFile(turn.savePath, bytes); // what the engine saves into the memfd
  expect(await session.commitTurn(turn, { kind: "static", messageCount: 2 })).toMatchObject({ committed: true });
}

/** Begin a turn on `key`: what it found (null: a miss, it primed) and, for a hit, the state it joins. */
async function resume(store: KvCacheStore, key: string, chunked = true): Promise<Buffer | null> {
  const session = store.createSession(MODEL, { fingerprint: "fp", ...(chunked ? { chunks: CHUNKING } : {}) });
  let primed = false;
  const turn = await session.beginTurn({
    kind: "custom",
    customKey: key,
    configHash,
    primeIfMissing: async (p) => {
      primed = true;
      await fs.writeFile(p, state(0));
    },
  });
  try {
    if (primed) return null;
    expect(turn.savedCount).toBe(2);
    return await session.loadState(turn, (loadPath) => fs.readFile(loadPath));
  } finally {
    await session.rollback(turn);
  }
}

async function tokenChunkKeys(keyPrefix: string): Promise<number> {
  return (await tokenChunkNames(keyPrefix)).length;
}

async function tokenChunkNames(keyPrefix: string, nodes: readonly RedisServer[] = [server]): Promise<string[]> {
  const names: string[] = [];
  for (const node of nodes) names.push(...(await node.cli("--scan", "--pattern", `${keyPrefix}{chunks:*`)).split("\n").filter((name) => name && !name.endsWith(":used")));
  return names.sort();
}

/**
 * Make every token chunk of a tenant look unused for `seconds`, on each node: its idle time
 * (RESTORE … IDLETIME, expiry kept) and the uses recorded in its context's `used` set.
 */
async function ageChunks(keyPrefix: string, seconds: number, nodes: readonly RedisServer[] = [server]): Promise<void> {
  for (const node of nodes) {
    const sets = (await node.cli("--scan", "--pattern", `${keyPrefix}{chunks:*}:used`)).split("\n").filter(Boolean);
    for (const set of sets) {
      await node.cli("EVAL", "for _, id in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do redis.call('ZINCRBY', KEYS[1], -tonumber(ARGV[1]), id) end return 1", "1", set, String(seconds * 1000));
    }
    const client = node === server ? raw : await connectRaw(node.url);
    try {
      const bin = client.withTypeMapping({ [RESP_TYPES.BLOB_STRING]: Buffer });
      for (const key of await tokenChunkNames(keyPrefix, [node])) {
        const dump = (await bin.dump(key)) as unknown as Buffer;
        await client.restore(key, Math.max(Number(await client.pTTL(key)), 0), dump, { REPLACE: true, IDLETIME: seconds });
      }
    } finally {
      if (client !== raw) client.destroy();
    }
  }
}

/**
 * A tenant without a TTL holding x's 6 token chunks, named by no state (x was deleted) and
 * unused for two hours: their context, ids and key names.
 */
async function orphanedChunks(x: Buffer) {
  const machine = machines({ ttlSeconds: null });
  const a = machine();
  await commitChunked(a.store, "x", x);
  await a.store.close();
  await deleteOn(machine, "x");
  await ageChunks(a.keyPrefix, 7200);
  const names = await tokenChunkNames(a.keyPrefix);
  const context = /\{chunks:([0-9a-f]+)\}/.exec(names[0]!)![1]!;
  const ids = names.map((name) => name.slice(name.lastIndexOf(":") + 1));
  const tier = () => createRedisTier({ url: server.url, keyPrefix: a.keyPrefix, timeoutMs: TEST_TIMEOUT_MS, ttlSeconds: null });
  return { keyPrefix: a.keyPrefix, names, context, ids, tier };
}

/** Delete `key` on a machine of the tenant: its remote state (record and tail) goes, its token chunks stay. */
async function deleteOn(machine: ReturnType<typeof machines>, key: string): Promise<void> {
  const m = machine();
  await m.store.delete({ kvCacheKey: key });
  await m.store.close();
}

describe("chunked caches through the Redis tier", () => {
  const x = state(100); // 6 full chunks + a tail of 4
  const y = state(100, 7, 64); // shares x's first 4 chunks

  it("uploads only the chunks the tier lacks; another machine fetches only the chunks its root lacks and joins the committed state byte for byte", async () => {
    if (loadNativeFs().createMemoryFile() === null) return; // no memfd here: sessions are whole-file only
    const machine = machines();
    const a = machine();
    await commitChunked(a.store, "x", x);
    await a.store.close(); // finishes its uploads
    expect(await tokenChunkKeys(a.keyPrefix)).toBe(6);
    const a2 = machine(a.root);
    await commitChunked(a2.store, "y", y);
    await a2.store.close();
    expect(await tokenChunkKeys(a.keyPrefix)).toBe(8); // y added its 2 own chunks only

    const b = machine();
    try {
      expect(Buffer.compare((await resume(b.store, "x"))!, x)).toBe(0);
      expect(b.counts.getChunk).toBe(6);
      expect((await listChunkFiles(b.root)).chunks.length).toBe(6);
      expect(Buffer.compare((await resume(b.store, "y"))!, y)).toBe(0);
      expect(b.counts.getChunk).toBe(6 + 2); // the 4 shared were on b's root already
      expect((await listChunkFiles(b.root)).chunks.length).toBe(8);
    } finally {
      await b.store.close();
    }
  });

  it("a reader of whole files misses a chunked remote state instead of taking its tail for a state", async () => {
    if (loadNativeFs().createMemoryFile() === null) return;
    const machine = machines();
    const a = machine();
    await commitChunked(a.store, "x", x);
    await a.store.close();
    const c = machine();
    try {
      expect(await resume(c.store, "x", false)).toBeNull();
      expect(c.counts.getChunk).toBe(0);
    } finally {
      await c.store.close();
    }
  });

  it("a chunk altered in Redis (another well-formed chunk's bytes) makes the state a miss on a machine that lacks it", async () => {
    if (loadNativeFs().createMemoryFile() === null) return;
    const machine = machines();
    const a = machine();
    await commitChunked(a.store, "x", x);
    await a.store.close();
    const keys = await tokenChunkNames(a.keyPrefix);
    // One chunk key's value copied over another's, inside Redis (the bytes stay exact).
    await server.cli("EVAL", `redis.call('SET', KEYS[2], redis.call('GET', KEYS[1])) return 1`, "2", keys[0]!, keys[1]!);
    const d = machine();
    try {
      expect(await resume(d.store, "x")).toBeNull();
    } finally {
      await d.store.close();
    }
  });
});

describe("collecting the token chunks no remote state names (kvkeep gc --remote)", () => {
  const x = state(100); // 6 full chunks + a tail of 4
  const y = state(100, 7, 64); // shares x's first 4 chunks, 2 of its own

  it("after a delete, removes only the chunks no state names and only once unused for an hour; the other conversation still resumes byte for byte", async () => {
    if (loadNativeFs().createMemoryFile() === null) return;
    const machine = machines();
    const a = machine();
    await commitChunked(a.store, "x", x);
    await commitChunked(a.store, "y", y);
    await a.store.close();
    await deleteOn(machine, "x");
    expect(await tokenChunkKeys(a.keyPrefix)).toBe(8); // x's 2 own chunks are left behind
    const scan = await kvkeep(["scan", "--remote", server.url, "--remote-prefix", a.keyPrefix, "--json"]);
    expect(json(scan)).toMatchObject([{ cacheKey: "y", tokenChunks: 6 }]);
    const scanTable = await kvkeep(["scan", "--remote", server.url, "--remote-prefix", a.keyPrefix]);
    expect(scanTable.stdout).toMatch(/CHUNKS/);
    expect(scanTable.stdout).toMatch(/^y\s.*\s6\s/m);
    const gc = (...extra: string[]) => kvkeep(["gc", "--root", a.root, "--remote", server.url, "--remote-prefix", a.keyPrefix, "--json", ...extra]);

    // Used just now (uploaded): kept, whatever no state names them.
    const young = await gc();
    expect(young.code, young.stderr).toBe(0);
    expect(json(young).remote.tokenChunks).toMatchObject({ chunks: 8, unreferenced: 2, removed: 0, removedBytes: 0 });
    expect(await tokenChunkKeys(a.keyPrefix)).toBe(8);

    await ageChunks(a.keyPrefix, 7200);
    const dry = await gc("--dry-run");
    expect(json(dry).remote.tokenChunks).toMatchObject({ chunks: 8, unreferenced: 2, removed: 2 });
    expect(await tokenChunkKeys(a.keyPrefix)).toBe(8);
    const human = await kvkeep(["gc", "--root", a.root, "--remote", server.url, "--remote-prefix", a.keyPrefix, "--dry-run"]);
    expect(human.stdout).toMatch(/^token chunks: 8 chunks \(.+\), 2 named by no state \(.+\): would remove 2 \(.+\)$/m);

    const run = await gc();
    const collected = json(run).remote.tokenChunks;
    expect(collected).toMatchObject({ chunks: 8, unreferenced: 2, removed: 2 });
    expect(collected.removedBytes).toBe(collected.unreferencedBytes);
    expect(await tokenChunkKeys(a.keyPrefix)).toBe(6); // y's 6, of them the 4 it shared with x

    const b = machine();
    try {
      expect(Buffer.compare((await resume(b.store, "y"))!, y)).toBe(0);
      expect(await resume(b.store, "x")).toBeNull();
    } finally {
      await b.store.close();
    }
  });

  it("an upload that finds a chunk present uses it (also without a TTL): a collection meanwhile keeps it for that upload", async () => {
    if (loadNativeFs().createMemoryFile() === null) return;
    const { keyPrefix, names, context, ids, tier: newTier } = await orphanedChunks(x);
    expect(names).toHaveLength(6);
    // Another machine's upload under way: it finds two of the chunks present (and publishes later).
    const tier = newTier();
    try {
      expect(await tier.putChunks(context, ids.slice(0, 2), async () => null)).toEqual({ ok: true, uploaded: 0, bytes: 0 });
      const collected = await tier.collectTokenChunks({ minIdleMs: 3_600_000, dryRun: false });
      expect(collected).toMatchObject({ ok: true, collection: { chunks: 6, unreferenced: 6, removed: 4 } });
    } finally {
      await tier.close();
    }
    expect(await tokenChunkNames(keyPrefix)).toEqual(names.slice(0, 2));
  });

  it("a collection while an upload reads its next chunk keeps the chunks that upload found present: finding one is its use", async () => {
    if (loadNativeFs().createMemoryFile() === null) return;
    const { keyPrefix, names, context, ids, tier } = await orphanedChunks(x);
    const absent = "0".repeat(32);
    const uploader = tier();
    const collector = tier();
    try {
      // The upload names an absent chunk first and two present ones after it; a gc runs while it reads the absent one.
      let during: unknown = null;
      const put = await uploader.putChunks(context, [absent, ids[0]!, ids[1]!], async () => {
        during = await collector.collectTokenChunks({ minIdleMs: 3_600_000, dryRun: false });
        return Buffer.alloc(100, 2);
      });
      expect(put).toEqual({ ok: true, uploaded: 1, bytes: 100 });
      expect(during).toMatchObject({ ok: true, collection: { removed: 4 } });
      expect(await tokenChunkNames(keyPrefix)).toEqual([...names.slice(0, 2), `${keyPrefix}{chunks:${context}}:${absent}`].sort());
    } finally {
      await uploader.close();
      await collector.close();
    }
  });

  it("collects nothing while a record cannot be read (a newer kvkeep's format would make its chunks look unnamed), and refuses a margin under a minute", async () => {
    if (loadNativeFs().createMemoryFile() === null) return;
    const machine = machines();
    const a = machine();
    await commitChunked(a.store, "x", x);
    await a.store.close();
    await ageChunks(a.keyPrefix, 7200);
    const heads = (await server.cli("--scan", "--pattern", `${a.keyPrefix}{*}:heads`)).split("\n").filter(Boolean);
    expect(heads).toHaveLength(1);
    await server.cli("HSET", heads[0]!, "from-a-newer-kvkeep", JSON.stringify({ format: 99 }));
    const tier = createRedisTier({ url: server.url, keyPrefix: a.keyPrefix, timeoutMs: TEST_TIMEOUT_MS });
    try {
      expect(await tier.collectTokenChunks({ minIdleMs: 3_600_000, dryRun: false })).toMatchObject({ ok: false, reason: expect.stringMatching(/cannot read/) });
      expect(await tokenChunkKeys(a.keyPrefix)).toBe(6);
      await expect(tier.collectTokenChunks({ minIdleMs: 0, dryRun: true })).rejects.toMatchObject({ code: "INVALID_ARGUMENT" });
    } finally {
      await tier.close();
    }
  });

  describe("on a 3-node cluster", () => {
    let cluster: RedisCluster;
    beforeAll(async () => {
      cluster = await startCluster();
    });
    afterAll(async () => {
      await Promise.all(clusterClients.splice(0).map((client) => client.close().catch(() => {})));
      await cluster?.stop();
    });

    it("gc --remote given one node's URL collects on every node: the chunks only a deleted state named go, the shared ones stay", async () => {
      if (loadNativeFs().createMemoryFile() === null) return;
      const machine = machines({ cluster });
      const a = machine();
      await commitChunked(a.store, "x", x);
      await commitChunked(a.store, "y", y);
      await a.store.close();
      await deleteOn(machine, "x");
      expect(await tokenChunkNames(a.keyPrefix, cluster.nodes)).toHaveLength(8);
      await ageChunks(a.keyPrefix, 7200, cluster.nodes);
      const run = await kvkeep(["gc", "--root", a.root, "--remote", cluster.nodes[2]!.url, "--remote-prefix", a.keyPrefix, "--json"]);
      expect(run.code, run.stderr).toBe(0);
      expect(json(run).remote).toMatchObject({ cluster: true, tokenChunks: { chunks: 8, unreferenced: 2, removed: 2 } });
      expect(await tokenChunkNames(a.keyPrefix, cluster.nodes)).toHaveLength(6);
      const b = machine();
      try {
        expect(Buffer.compare((await resume(b.store, "y"))!, y)).toBe(0);
      } finally {
        await b.store.close();
      }
    });
  });
});
