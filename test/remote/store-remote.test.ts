/**
 * The store with a Redis tier (`openKvCacheStore({ remote })`): two stores on two roots
 * stand for two machines sharing one real redis-server. Fake engine bytes (self-checking
 * states); the real engine across real processes is in fleet.test.ts.
 */
import { promises as fs } from "node:fs";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { openKvCacheStore } from "../../src/index.js";
import { messageKeyChain } from "../../src/keys/auto-key.js";
import { createRedisTier } from "../../src/remote/redis/index.js";
import { keyTag, scopeTag } from "../../src/remote/redis/keys.js";
import { parseRecord } from "../../src/remote/record.js";
import type { InternalStoreOptions, KvCacheStore } from "../../src/facade/kvkeep-store.js";
import {
  assistant,
  commitAutoConversation,
  commitNamedConversation,
  configHash,
  conversation,
  isWholeState,
  MODEL,
  user,
  writeSelfCheckingState,
} from "../index/helpers.js";
import { tempDir } from "../helpers/temp-root.js";
import { type RedisServer, startRedis } from "./helpers/redis-server.js";
import { recordingLogger, TEST_TIMEOUT_MS } from "./helpers/states.js";

const FINGERPRINT = "fp-store-remote";

let server: RedisServer;
let tenant = 0;
beforeAll(async () => {
  server = await startRedis();
});
afterAll(async () => {
  await server?.stop();
});

/** Two machines: stores on two roots, sharing one Redis under one tenant prefix per test. */
function machines(options: { logger?: ReturnType<typeof recordingLogger>; maxPendingUploads?: number; timeoutMs?: number } = {}) {
  const keyPrefix = `kvkeep:t${++tenant}:`;
  const open = (internals: InternalStoreOptions = {}): KvCacheStore =>
    openKvCacheStore({
      root: tempDir(),
      logger: options.logger,
      maxPendingUploads: options.maxPendingUploads,
      remote: createRedisTier({ url: server.url, keyPrefix, chunkBytes: 4096, timeoutMs: options.timeoutMs ?? TEST_TIMEOUT_MS }),
      ...internals,
    });
  return { open, keyPrefix };
}

/** One session per store (a turn's handle belongs to the session that began it). */
const sessions = new WeakMap<KvCacheStore, ReturnType<KvCacheStore["createSession"]>>();
function session(store: KvCacheStore): ReturnType<KvCacheStore["createSession"]> {
  let s = sessions.get(store);
  if (!s) sessions.set(store, (s = store.createSession(MODEL, { fingerprint: FINGERPRINT })));
  return s;
}

/** Commit on a machine of its own, then close it (which finishes its uploads); the committed bytes. */
async function commitOnce(open: () => KvCacheStore, commit: (s: ReturnType<KvCacheStore["createSession"]>) => Promise<string>): Promise<Buffer> {
  const store = open();
  const bytes = await fs.readFile(await commit(session(store)));
  await store.close();
  return bytes;
}

/** A turn on `key` finds nothing, here or in Redis: it primes once and starts from 0 messages. */
async function expectMiss(store: KvCacheStore, key: string): Promise<void> {
  let primed = 0;
  const prime = async (p: string): Promise<void> => {
    primed += 1;
    await writeSelfCheckingState(p, 64);
  };
  const turn = await session(store).beginTurn({ kind: "custom", customKey: key, configHash, primeIfMissing: prime });
  expect(primed).toBe(1);
  expect(turn.savedCount).toBe(0);
  await session(store).rollback(turn);
}

async function primeNever(): Promise<void> {
  throw new Error("primed although the state was in Redis");
}

describe("store with a Redis tier", () => {
  it("a named conversation committed on A resumes on B as a hit: A's bytes, A's saved count, no prime", async () => {
    const { open } = machines();
    const history = conversation("named", 3);
    const bytesA = await commitOnce(open, (s) => commitNamedConversation(s, "chat-42", history, { size: 20_000 }));

    const b = open();
    const turn = await session(b).beginTurn({ kind: "custom", customKey: "chat-42", configHash, primeIfMissing: primeNever });
    expect(turn).toMatchObject({ primed: false, savedCount: history.length });
    expect((await fs.readFile(turn.cachePath)).equals(bytesA)).toBe(true);
    await writeSelfCheckingState(turn.savePath);
    expect(await session(b).commitTurn(turn, { kind: "static", messageCount: history.length + 2 })).toMatchObject({ committed: true });
    await b.close();
  });

  it("an auto-mode conversation resumes on B at its lookup key", async () => {
    const { open } = machines();
    const history = conversation("auto", 2);
    const bytesA = await commitOnce(open, (s) => commitAutoConversation(s, history, 30_000));

    const b = open();
    const next = [...history, user("and then?")];
    const turn = await session(b).beginTurn({ kind: "auto", configHash, history: next, primeIfMissing: primeNever });
    expect(turn.savedCount).toBe(history.length);
    expect(turn.cachePath).toBe(session(b).autoCachePath(configHash, history));
    expect((await fs.readFile(turn.cachePath)).equals(bytesA)).toBe(true);
    await session(b).rollback(turn);
    await b.close();
  });

  it("a prefix cached on A is found by B's findPrefix and lent by borrowPrefix", async () => {
    const { open } = machines();
    const history = conversation("prefix", 4);
    const bytesA = await commitOnce(open, (s) => commitAutoConversation(s, history, 25_000));

    const b = open();
    // Shares the system prompt and the first two exchanges, then goes elsewhere.
    const query = [...history.slice(0, 5), user("a different question")];
    const match = await b.findPrefix({ modelId: MODEL, fingerprint: FINGERPRINT, configHash, history: query });
    expect(match).toMatchObject({ commonMessages: 5, messageCount: history.length, bytes: bytesA.length, kind: "auto" });
    const lent = await b.borrowPrefix({ modelId: MODEL, fingerprint: FINGERPRINT, configHash, history: query }, async (src) =>
      fs.readFile(src.loadPath),
    );
    expect(lent!.value.equals(bytesA)).toBe(true);
    // Another model fingerprint never gets it.
    expect(await b.findPrefix({ modelId: MODEL, fingerprint: "other", configHash, history: query })).toBeNull();
    await b.close();
  });

  it("a delete on A reaches Redis: B misses afterwards", async () => {
    const { open } = machines();
    const a = open();
    await commitNamedConversation(session(a), "to-forget", conversation("forget", 2));
    await a.close();
    const a2 = open();
    const b = open();
    // A second machine A2 deletes (it never had it locally): the fleet's copy goes.
    await a2.delete({ kvCacheKey: "to-forget" });
    await expectMiss(b, "to-forget");
    await Promise.all([a2.close(), b.close()]);
  });

  it("a delete while Redis is down is not undone when Redis comes back with the state: the delete is retried, and no machine resumes it", async () => {
    const logger = recordingLogger();
    const { open, keyPrefix } = machines({ logger, timeoutMs: 200 }); // the default deadline: a delete gives up within 1 s
    const a = open();
    await commitNamedConversation(session(a), "forget-offline", conversation("forget", 2));
    await a.close(); // uploaded
    // Its record and chunks (a delete leaves only its tombstone).
    const remoteKeys = async (): Promise<string> => server.cli("--scan", "--pattern", `${keyPrefix}{${keyTag("forget-offline")}}:[hd]*`);
    expect(await remoteKeys()).not.toBe("");
    await server.cli("SAVE"); // Redis will come back with the state (a restart from its snapshot)

    const a2 = open();
    await server.kill();
    try {
      await a2.delete({ kvCacheKey: "forget-offline" });
      expect(logger.lines.some((l) => l.level === "warn" && l.line.includes("could not be deleted yet"))).toBe(true);
    } finally {
      await server.restart();
    }
    expect(await remoteKeys()).not.toBe(""); // back from the snapshot
    // The retry (1 s, then doubling) takes the delete once the breaker lets it through.
    const deadline = Date.now() + 20_000;
    while ((await remoteKeys()) !== "" && Date.now() < deadline) await new Promise((r) => setTimeout(r, 100));
    expect(await remoteKeys()).toBe("");
    const b = open();
    await expectMiss(a2, "forget-offline");
    await expectMiss(b, "forget-offline");
    await Promise.all([a2.close(), b.close()]);
  });

  it("until its delete reaches Redis, a store never reads the deleted conversation back, though Redis serves it again; close() takes the delete", async () => {
    const logger = recordingLogger();
    const { open, keyPrefix } = machines({ logger, timeoutMs: 200 });
    const a = open();
    await commitNamedConversation(session(a), "forget-offline", conversation("forget", 2));
    const probe = conversation("probe", 2);
    await commitAutoConversation(session(a), probe);
    await a.close();
    await server.cli("SAVE");
    const remoteKeys = async (): Promise<string> => server.cli("--scan", "--pattern", `${keyPrefix}{${keyTag("forget-offline")}}:[hd]*`);

    const a2 = open({ remoteInternals: { deleteRetryFirstMs: 600_000 } }); // no retry during the test
    await server.kill();
    try {
      await a2.delete({ kvCacheKey: "forget-offline" });
    } finally {
      await server.restart();
    }
    // Wait until Redis serves this store again: another conversation's prefix comes through.
    const query = { modelId: MODEL, fingerprint: FINGERPRINT, configHash, history: [...probe.slice(0, 3), user("other")] };
    const deadline = Date.now() + 20_000;
    while (!(await a2.findPrefix(query)) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 100));
    expect(await a2.findPrefix(query)).not.toBeNull();
    expect(await remoteKeys()).not.toBe(""); // Redis has the deleted state again…
    await expectMiss(a2, "forget-offline"); // …and this store does not take it

    await a2.close(); // its last retry
    expect(await remoteKeys()).toBe("");
    expect(logger.lines.some((l) => l.line.includes("closing with remote copies still not deleted"))).toBe(false);
    const b = open();
    await expectMiss(b, "forget-offline");
    await b.close();
  });

  it("a conversation continued after a delete Redis could not take is uploaded after that delete goes through, never removed by it", async () => {
    const { open, keyPrefix } = machines({ timeoutMs: 200 });
    const a = open();
    await commitNamedConversation(session(a), "chat-1", conversation("old", 1)); // connects, uploads
    await server.kill();
    try {
      await a.delete({ kvCacheKey: "chat-1" });
    } finally {
      await server.restart(); // empty: nothing to resurrect here; the point is the new commit
    }
    const continued = conversation("new", 2);
    const bytes = await fs.readFile(await commitNamedConversation(session(a), "chat-1", continued));
    // The retry lands (a tombstone), and only then the new state is uploaded (a record).
    const has = async (what: string): Promise<boolean> => (await server.cli("EXISTS", `${keyPrefix}{${keyTag("chat-1")}}:${what}`)) === "1";
    const deadline = Date.now() + 20_000;
    while (!((await has("tombs")) && (await has("heads"))) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 100));
    await a.close();
    const b = open();
    const turn = await session(b).beginTurn({ kind: "custom", customKey: "chat-1", configHash, primeIfMissing: primeNever });
    expect(turn.savedCount).toBe(continued.length);
    expect((await fs.readFile(turn.cachePath)).equals(bytes)).toBe(true);
    await session(b).rollback(turn);
    await b.close();
  });

  it("a delete made once Redis is back is sent at once, with the earlier one still pending, not after the backoff", async () => {
    const { open, keyPrefix } = machines({ timeoutMs: 200 });
    const a = open();
    await commitNamedConversation(session(a), "first", conversation("first", 1));
    await commitNamedConversation(session(a), "second", conversation("second", 1));
    await a.close();
    await server.cli("SAVE");
    const a2 = open({ remoteInternals: { deleteRetryFirstMs: 600_000 } });
    await server.kill();
    try {
      await a2.delete({ kvCacheKey: "first" });
    } finally {
      await server.restart();
    }
    const keysOf = (key: string): Promise<string> => server.cli("--scan", "--pattern", `${keyPrefix}{${keyTag(key)}}:[hd]*`);
    expect(await keysOf("second")).not.toBe("");
    // The breaker may still be open for a moment after the outage: the delete is retried until it lands.
    const deadline = Date.now() + 20_000;
    do await a2.delete({ kvCacheKey: "second" });
    while ((await keysOf("second")) !== "" && Date.now() < deadline);
    expect(await keysOf("second")).toBe("");
    expect(await keysOf("first")).toBe(""); // taken by the same run, in order
    await a2.close();
  });

  it("a turn never waits for its upload: commits resolve while Redis is stalled", async () => {
    const { open } = machines({ maxPendingUploads: 2, timeoutMs: 100 });
    const a = open();
    const s = session(a);
    await commitNamedConversation(s, "warm-up", conversation("w", 1)); // connects the client
    await a.close();
    const a2 = open();
    const s2 = session(a2);
    server.child()!.kill("SIGSTOP");
    try {
      for (let i = 0; i < 6; i++) {
        const started = performance.now();
        await commitNamedConversation(s2, `stalled-${i}`, conversation(`s${i}`, 1));
        // Uploading waits up to 10 s per chunk on a stalled server; the commit did not.
        expect(performance.now() - started).toBeLessThan(3000);
      }
    } finally {
      server.child()!.kill("SIGCONT");
    }
    await a2.close();
  });

  it("Redis down: turns run on the local tier and the remote is used again once it is back", async () => {
    const logger = recordingLogger();
    const { open } = machines({ logger });
    const a = open();
    const b = open();
    await server.kill();
    try {
      // Both machines keep working locally while Redis is gone.
      await commitNamedConversation(session(a), "offline", conversation("offline", 2));
      const primed: string[] = [];
      const turn = await session(b).beginTurn({
        kind: "custom",
        customKey: "offline",
        configHash,
        primeIfMissing: async (p) => {
          primed.push(p);
          await writeSelfCheckingState(p, 64);
        },
      });
      expect(primed).toHaveLength(1);
      await writeSelfCheckingState(turn.savePath);
      expect(await session(b).commitTurn(turn, { kind: "static", messageCount: 3 })).toMatchObject({ committed: true });
      expect(logger.lines.filter((l) => l.level === "warn" && l.line.includes("unreachable")).length).toBeGreaterThanOrEqual(1);
    } finally {
      await server.restart();
    }
    // Back: A's next commit reaches Redis and a third machine resumes it.
    const history = conversation("back", 2);
    const deadline = Date.now() + 20_000;
    let resumed = false;
    for (let round = 0; !resumed && Date.now() < deadline; round++) {
      await commitNamedConversation(session(a), "back-online", history, { size: 5000 + round });
      await new Promise((r) => setTimeout(r, 200));
      const c = open();
      const turn = await session(c).beginTurn({ kind: "custom", customKey: "back-online", configHash, primeIfMissing: writeSelfCheckingState });
      resumed = !turn.primed;
      await session(c).rollback(turn);
      await c.close();
    }
    expect(resumed).toBe(true);
    await Promise.all([a.close(), b.close()]);
  });

  it("a flipped byte in Redis: B misses, logs, and primes instead", async () => {
    const logger = recordingLogger();
    const { open, keyPrefix } = machines({ logger });
    const a = open();
    await commitNamedConversation(session(a), "tampered", conversation("t", 2), { size: 12_000 });
    await a.close();
    const tier = createRedisTier({ url: server.url, keyPrefix });
    const id = { modelId: MODEL, fingerprint: FINGERPRINT, configHash, cacheKey: "tampered" };
    const record = parseRecord((await server.cli("hget", tier.keys.heads("tampered"), scopeTag(id)))!, id);
    if ("error" in record) throw new Error(record.error);
    const dataKey = tier.keys.data(id, record.xxh64, record.dataGeneration);
    // Overwrite chunk 1 with the same length of other bytes (redis-cli sends text: use a printable run).
    await server.cli("hset", dataKey, "1", "x".repeat(4096));
    await tier.close();

    const b = open();
    await expectMiss(b, "tampered");
    expect(logger.lines.some((l) => l.level === "warn" && l.line.includes("remote state is broken"))).toBe(true);
    await b.close();
  });

  it("two machines racing on one named conversation: a third resumes exactly one whole state", async () => {
    const { open } = machines();
    const a = open();
    const b = open();
    const history = conversation("race", 2);
    await Promise.all(
      [a, b].map(async (store) => {
        for (let round = 0; round < 4; round++) {
          await commitNamedConversation(session(store), "contested", [...history, user(`r${round}`), assistant("ok")], { size: 9000 + round * 977 });
        }
      }),
    );
    const finals = await Promise.all([a, b].map(async (store) => fs.readFile(session(store).customCachePath("contested", configHash))));
    await Promise.all([a.close(), b.close()]);
    const c = open();
    const turn = await session(c).beginTurn({ kind: "custom", customKey: "contested", configHash, primeIfMissing: primeNever });
    const got = await fs.readFile(turn.cachePath);
    expect(isWholeState(got)).toBe(true);
    expect(finals.some((f) => f.equals(got))).toBe(true);
    await session(c).rollback(turn);
    await c.close();
  });

  it("the remote tier keeps the chain: B's local prefix index knows a state it fetched", async () => {
    const { open } = machines();
    const a = open();
    const history = conversation("chain", 3);
    await commitNamedConversation(session(a), "with-chain", history);
    await a.close();
    const b = open();
    const turn = await session(b).beginTurn({ kind: "custom", customKey: "with-chain", configHash, primeIfMissing: primeNever });
    const manifest = JSON.parse(await fs.readFile(turn.cachePath.replace(/\.bin$/, ".meta.json"), "utf8"));
    expect(manifest.current.chain).toEqual(messageKeyChain(history).keys().slice(1));
    await session(b).rollback(turn);
    await b.close();
  });

  it("refuses a remote that is not a tier, and a queue bound that is not a positive integer", () => {
    for (const [options, argument] of [
      [{ remote: { url: "redis://x" } }, "remote"],
      [{ remote: "redis://x" }, "remote"],
      [{ maxPendingUploads: 0 }, "maxPendingUploads"],
      [{ maxPendingUploads: 1.5 }, "maxPendingUploads"],
    ] as const) {
      expect(() => openKvCacheStore({ root: tempDir(), ...(options as object) })).toThrow(
        expect.objectContaining({ code: "INVALID_ARGUMENT", argument }),
      );
    }
  });
});
