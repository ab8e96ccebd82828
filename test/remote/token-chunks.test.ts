/**
 * Chunked caches through the Redis tier (docs/chunks-format.md), real redis-server, roots standing
 * for machines, real sessions committing sequence states (written from the layout table)
 * through the memory handoff: an upload sends only the token chunks the tier lacks; a
 * read-through on another machine fetches only the chunks its root lacks, verifies each, and
 * the state it joins is byte for byte the one committed; a whole-file reader never takes the
 * tail for a state; a chunk altered in Redis makes the state a miss.
 */
import { promises as fs } from "node:fs";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { listChunkFiles } from "../../src/chunkfiles/collect.js";
import { openKvCacheStore, type KvCacheStore } from "../../src/index.js";
import { loadNativeFs } from "../../src/native/index.js";
import { createRedisTier } from "../../src/remote/redis/index.js";
import { buildState } from "../chunks/synthetic-state.js";
import { configHash, MODEL } from "../index/helpers.js";
import { tempDir } from "../helpers/temp-root.js";
import { type RedisServer, startRedis } from "./helpers/redis-server.js";
import { TEST_TIMEOUT_MS } from "./helpers/states.js";

let server: RedisServer;
beforeAll(async () => {
  server = await startRedis();
});
afterAll(async () => {
  await server?.stop();
});

const CHUNK_TOKENS = 16;
const CHUNKING = { attentionRotation: "default", sequences: 1, chunkTokens: CHUNK_TOKENS };
const layers = [{ kType: 1, kRowBytes: 32, vType: 1, vRowBytes: 32 }];
/** A state of `tokens` tokens; two with different salts share their first `saltFrom` tokens. */
const state = (tokens: number, salt = 0, saltFrom = 0): Buffer => buildState({ tokenCount: tokens, vTrans: false, layers, salt, saltFrom });

let tenant = 0;

/** A machine: a store on a root of its own, on the shared Redis (the tier counts its chunk fetches). */
function machines() {
  const keyPrefix = `kvkeep:tc${++tenant}:`;
  return (root = tempDir()) => {
    const tier = createRedisTier({ url: server.url, keyPrefix, chunkBytes: 4096, timeoutMs: TEST_TIMEOUT_MS });
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
  const out = await server.cli("--scan", "--pattern", `${keyPrefix}{chunks:*`);
  return out.split("\n").filter(Boolean).length;
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
    const keys = (await server.cli("--scan", "--pattern", `${a.keyPrefix}{chunks:*`)).split("\n").filter(Boolean).sort();
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
