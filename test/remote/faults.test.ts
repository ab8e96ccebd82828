/**
 * The Redis tier when things go wrong, on real redis-server processes: a writer killed
 * mid-upload, Redis killed and restarted, Redis stalled, memory full or evicting. The
 * promises pinned: a reader sees a whole state or none; a lookup settles by its deadline;
 * an outage warns once, opens the breaker, and remote use resumes after it; nothing throws.
 */
import { randomBytes } from "node:crypto";
import { promises as fs } from "node:fs";
import path from "node:path";
import { createClient } from "redis";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { xxh64Hex } from "../../src/keys/hash.js";
import { createRedisTier, type RedisTier } from "../../src/remote/redis/index.js";
import { PENDING_TTL_SECONDS } from "../../src/remote/redis/tier.js";
import { bundleFixture, runChild } from "../helpers/child.js";
import { tempDir } from "../helpers/temp-root.js";
import { type RedisServer, startRedis } from "./helpers/redis-server.js";
import { cacheId, exists, fetchBytes, makeState, recordingLogger, reserveAndUpload } from "./helpers/states.js";

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** Retry `attempt` until it returns true (the tier recovers on its own schedule). */
async function eventually(what: string, attempt: () => Promise<boolean>, timeoutMs = 20_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await attempt())) {
    if (Date.now() > deadline) throw new Error(`${what} did not happen within ${timeoutMs} ms`);
    await sleep(100);
  }
}

describe("a writer killed mid-upload", () => {
  let server: RedisServer;
  let writer: string;
  beforeAll(async () => {
    [server, writer] = await Promise.all([startRedis(), bundleFixture("test/remote/fixtures/upload-writer.ts")]);
  });
  afterAll(async () => {
    await server?.stop();
  });

  it.each(["remote:after-chunk@3", "remote:after-chunk@40", "remote:before-publish@1"])(
    "at %s publishes nothing, and its chunks expire",
    async (crashAt) => {
      const dir = tempDir();
      const file = path.join(dir, "state.bin");
      const bytes = randomBytes(16 * 1024 * 64);
      await fs.writeFile(file, bytes);
      const key = `killed-${crashAt.replace(/[^a-z0-9]/g, "-")}`;
      const run = runChild(writer, [server.url, file, key, String(16 * 1024)], { KVKEEP_TEST_CRASH_AT: crashAt });
      const generation = Number((await run.waitForLine((l) => l.startsWith("reserved "))).split(" ")[1]);
      expect(await run.exited, run.stderr()).toBe("SIGKILL");
      const reader = createRedisTier({ url: server.url });
      try {
        const id = cacheId(key);
        expect(await fetchBytes(reader, dir, id)).toMatchObject({ hit: false, reason: "absent" });
        const dataKey = reader.keys.data(id, xxh64Hex(bytes), generation);
        expect(Number(await server.cli("hlen", dataKey))).toBeGreaterThanOrEqual(3);
        const ttl = Number(await server.cli("ttl", dataKey));
        expect(ttl).toBeGreaterThan(0);
        expect(ttl).toBeLessThanOrEqual(PENDING_TTL_SECONDS);
        // The next writer of the same cache is not disturbed by the leftovers.
        const next = await makeState(dir, id, 100_000);
        expect((await reserveAndUpload(reader, next)).outcome).toBe("published");
        expect((await fetchBytes(reader, dir, id)).bytes!.equals(next.bytes)).toBe(true);
      } finally {
        await reader.close();
      }
    },
  );

  it("at random instants: a reader sees the whole state or nothing, never part of one", async () => {
    const dir = tempDir();
    const reader = createRedisTier({ url: server.url });
    let published = 0;
    let killedBefore = 0;
    try {
      for (let round = 0; round < 6; round++) {
        const file = path.join(dir, `state-${round}.bin`);
        const bytes = randomBytes(4 * 1024 * 1024);
        await fs.writeFile(file, bytes);
        const key = `random-kill-${round}`;
        const run = runChild(writer, [server.url, file, key, String(16 * 1024)]);
        await run.waitForLine((l) => l.startsWith("reserved "));
        await sleep(Math.floor(Math.random() * 30));
        run.child.kill("SIGKILL");
        await run.exited;
        const got = await fetchBytes(reader, dir, cacheId(key));
        if (got.hit) {
          expect(got.bytes!.equals(bytes)).toBe(true);
          published += 1;
        } else {
          expect(got.reason).toBe("absent");
          expect(await exists(got.temp)).toBe(false);
          killedBefore += 1;
        }
      }
    } finally {
      await reader.close();
    }
    expect(published + killedBefore).toBe(6);
  });
});

describe("Redis down, stalled or restarted", () => {
  it("killed mid-run: lookups answer unavailable at once, one warning, breaker open; remote use resumes after a restart", async () => {
    const server = await startRedis();
    const logger = recordingLogger();
    const tier = createRedisTier({ url: server.url, logger, timeoutMs: 200 });
    const dir = tempDir();
    try {
      const before = await makeState(dir, cacheId("before"), 50_000);
      expect((await reserveAndUpload(tier, before)).outcome).toBe("published");
      await server.kill();
      for (let i = 0; i < 5; i++) {
        const started = performance.now();
        expect(await fetchBytes(tier, dir, before.state.id)).toMatchObject({ hit: false, reason: "unavailable" });
        // Far above the 200 ms deadline, far below a hang: nothing waits for a dead server.
        expect(performance.now() - started).toBeLessThan(2000);
      }
      expect(await tier.reserve(before.state.id)).toEqual({ ok: false, reason: "unavailable" });
      expect(tier.stats()).toMatchObject({ breaker: "open", outages: 1 });
      expect(tier.stats().skipped).toBeGreaterThan(0);
      const warnings = logger.lines.filter((l) => l.level === "warn");
      expect(warnings).toHaveLength(1);
      expect(warnings[0]!.line).toContain("remote redis tier unreachable");

      await server.restart(); // empty: this server keeps nothing across restarts
      const after = await makeState(dir, cacheId("after"), 50_000);
      await eventually("remote use after the restart", async () => (await tier.reserve(after.state.id)).ok);
      expect((await reserveAndUpload(tier, after)).outcome).toBe("published");
      expect((await fetchBytes(tier, dir, after.state.id)).bytes!.equals(after.bytes)).toBe(true);
      expect(tier.stats().breaker).toBe("closed");
      expect(logger.lines.some((l) => l.level === "info" && l.line.includes("reachable again"))).toBe(true);
      expect(logger.lines.filter((l) => l.level === "warn")).toHaveLength(1);
    } finally {
      await tier.close();
      await server.stop();
    }
  });

  it("stalled (SIGSTOP): every lookup settles by its deadline; it recovers when the server does", async () => {
    const server = await startRedis();
    const tier = createRedisTier({ url: server.url, timeoutMs: 150 });
    const dir = tempDir();
    try {
      const file = await makeState(dir, cacheId("stalled"), 50_000);
      await reserveAndUpload(tier, file);
      server.child()!.kill("SIGSTOP");
      for (let i = 0; i < 3; i++) {
        const started = performance.now();
        expect(await fetchBytes(tier, dir, file.state.id)).toMatchObject({ hit: false, reason: "unavailable" });
        expect(performance.now() - started).toBeLessThan(2000);
      }
      expect(tier.stats().timeouts).toBeGreaterThanOrEqual(2);
      server.child()!.kill("SIGCONT");
      await eventually("a hit after the server resumed", async () => (await fetchBytes(tier, dir, file.state.id)).hit);
    } finally {
      server.child()?.kill("SIGCONT");
      await tier.close();
      await server.stop();
    }
  });
});

describe("Redis out of memory", () => {
  it("evicting (allkeys-lru): each state reads whole or as a miss, never torn, never a crash", async () => {
    const server = await startRedis({ args: ["--maxmemory", "3mb", "--maxmemory-policy", "allkeys-lru"] });
    const tier = createRedisTier({ url: server.url, chunkBytes: 64 * 1024 });
    const dir = tempDir();
    try {
      const files = [];
      for (let i = 0; i < 16; i++) {
        const file = await makeState(dir, cacheId(`evict-${i}`), 400_000);
        files.push(file);
        await reserveAndUpload(tier, file); // may fail when its own chunks are evicted meanwhile
      }
      let hits = 0;
      for (const file of files) {
        const got = await fetchBytes(tier, dir, file.state.id);
        if (got.hit) {
          expect(got.bytes!.equals(file.bytes)).toBe(true);
          hits += 1;
        } else {
          expect(["absent", "corrupt"]).toContain(got.reason);
          expect(await exists(got.temp)).toBe(false);
        }
      }
      expect(hits).toBeLessThan(files.length); // 6.4 MB cannot fit in 3 MB
      expect(Number(await server.cli("info", "stats").then((s) => /evicted_keys:(\d+)/.exec(s)![1]))).toBeGreaterThan(0);
      expect(tier.stats().breaker).toBe("closed");
    } finally {
      await tier.close();
      await server.stop();
    }
  });

  it("full (noeviction): an upload is refused as failed while lookups keep working", async () => {
    const server = await startRedis({ args: ["--maxmemory", "2mb", "--maxmemory-policy", "noeviction"] });
    const tier = createRedisTier({ url: server.url, chunkBytes: 64 * 1024 });
    const dir = tempDir();
    try {
      const big = await makeState(dir, cacheId("too-big"), 4_000_000);
      const outcome = await reserveAndUpload(tier, big);
      expect(outcome.outcome).toBe("failed");
      expect(JSON.stringify(outcome)).toContain("OOM");
      expect(await fetchBytes(tier, dir, big.state.id)).toMatchObject({ hit: false, reason: "absent" });
      expect(tier.stats().breaker).toBe("closed");
      // What it had written is removed again, so the server has room for the next one.
      const client = await createClient({ url: server.url }).connect();
      expect(await client.keys("*:data:*")).toEqual([]);
      client.destroy();
    } finally {
      await tier.close();
      await server.stop();
    }
  });
});
