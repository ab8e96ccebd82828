/**
 * A fleet on one real redis-server: each machine is a process of its own with a store on
 * its own root, running the real engine (node-llama-cpp, greedy) on the generated tiny
 * model. What a user of several inference workers relies on: a conversation resumes on any
 * worker with the reply it would have had anywhere; a prefix cached on one is reused by
 * another; a crash, an outage, a delete, a tampered byte or a race never hands anyone a
 * wrong state.
 */
import { promises as fs } from "node:fs";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createLlamaCppCompletion } from "../../src/engines/node-llama-cpp/index.js";
import { type CacheMessage, generateConfigHash, openKvCacheStore } from "../../src/index.js";
import { createRedisTier } from "../../src/remote/redis/index.js";
import { type ChatMessage, createContext, greedyGenerate, loadFixtureModel, renderChat } from "../fixtures/engine.js";
import { bundleFixture, runChild } from "../helpers/child.js";
import { tempDir } from "../helpers/temp-root.js";
import { type RedisServer, startRedis } from "./helpers/redis-server.js";
import { TEST_TIMEOUT_MS } from "./helpers/states.js";

const FINGERPRINT = "fleet-test-fingerprint"; // as fleet-worker.ts passes it
const FLEET_MAX_TOKENS = 16; // as fleet-worker.ts generates
const system: CacheMessage = { role: "system", content: "You are a terse assistant who answers in riddles." };
const u1: CacheMessage = { role: "user", content: "What walks on four legs in the morning?" };
const u2: CacheMessage = { role: "user", content: "And what about the evening, then?" };
const u2b: CacheMessage = { role: "user", content: "Why is the sky blue at noon?" };
const configHash = generateConfigHash(system.content);

let server: RedisServer;
let modelPath: string;
let worker: string;
let tenant = 0;

beforeAll(async () => {
  [server, { path: modelPath }, worker] = await Promise.all([
    startRedis(),
    loadFixtureModel("tiny"),
    bundleFixture("test/remote/fixtures/fleet-worker.ts"),
  ]);
}, 120_000);
afterAll(async () => {
  await server?.stop();
});

interface TurnResult {
  text: string;
  stats: { hit: boolean; reusedTokens: number; promptTokens: number; source: "own" | "prefix" | "none" };
}

/** A fresh tenant prefix per test, so tests never see each other's states. */
function fleet(options: { chunkBytes?: number } = {}) {
  const redis = { url: server.url, keyPrefix: `kvkeep:fleet${++tenant}:`, timeoutMs: TEST_TIMEOUT_MS, ...options };
  const run = async <T>(root: string, request: object, env: NodeJS.ProcessEnv = {}): Promise<{ value: T; stderr: string }> => {
    const child = runChild(worker, [modelPath, root, JSON.stringify({ redis, ...request })], env);
    const code = await child.exited;
    if (code !== 0) throw new Error(`worker exited ${code}: ${child.stderr()}`);
    const lines = child.stdout().trim().split("\n");
    return { value: JSON.parse(lines.at(-1)!) as T, stderr: child.stderr() };
  };
  return {
    redis,
    turn: (root: string, history: CacheMessage[], kvCache: string | boolean, env?: NodeJS.ProcessEnv) =>
      run<TurnResult>(root, { history, kvCache }, env),
  };
}

/** The reference: the raw engine on a fresh context, greedy, in this process (what any worker answers cold). */
async function cold(history: CacheMessage[]): Promise<string> {
  const { model } = await loadFixtureModel("tiny");
  const context = await createContext(model, { contextSize: 512 });
  try {
    const { tokens, endedWithEog } = await greedyGenerate(context.getSequence(), renderChat(model, history as ChatMessage[]), FLEET_MAX_TOKENS);
    return model.detokenize(endedWithEog ? tokens.slice(0, -1) : tokens);
  } finally {
    await context.dispose();
  }
}

const withReply = (history: CacheMessage[], text: string): CacheMessage[] => [...history, { role: "assistant", content: text }];

describe("a fleet of workers sharing Redis (real engine, separate processes)", () => {
  it("A commits, B resumes with a hit and the reply A would have given", async () => {
    const f = fleet();
    const rootA = tempDir();
    const t1 = await f.turn(rootA, [system, u1], "chat-1");
    expect(t1.value.stats.hit).toBe(false);
    expect(t1.value.text.length).toBeGreaterThan(0); // replies to compare, not empty strings
    const second = [...withReply([system, u1], t1.value.text), u2];
    const onB = await f.turn(tempDir(), second, "chat-1");
    expect(onB.value.stats.hit).toBe(true);
    expect(onB.value.stats.reusedTokens).toBeGreaterThan(0);
    // What A itself gives next, from its own disk without Redis, is the same reply.
    const onA = (await fleet().turn(rootA, second, "chat-1")).value; // another tenant: nothing remote
    expect(onA.stats.hit).toBe(true);
    expect(onB.value.text.length).toBeGreaterThan(0);
    expect(onB.value.text).toBe(onA.text);
    expect(onB.value.text).toBe(await cold(second));
  });

  it("auto mode: B resumes A's conversation by its history; C, whose conversation branches from it, starts from it (prefix)", async () => {
    const f = fleet();
    const t1 = await f.turn(tempDir(), [system, u1], true);
    const second = [...withReply([system, u1], t1.value.text), u2];
    const onB = await f.turn(tempDir(), second, true);
    expect(onB.value.stats).toMatchObject({ hit: true, source: "own" });
    expect(onB.value.text).toBe(await cold(second));
    // C regenerates B's last reply differently and asks on: its own key is nowhere, but B's
    // state (uploaded after B's turn) shares its first four messages.
    const branched = [...second, { role: "assistant" as const, content: "Another answer entirely." }, u2b];
    const onC = await f.turn(tempDir(), branched, true);
    expect(onC.value.stats).toMatchObject({ hit: true, source: "prefix" }); // hit = tokens reused
    expect(onC.value.stats.reusedTokens).toBeGreaterThan(0);
    expect(onC.value.text).toBe(await cold(branched));
  });

  // The upload of a chunked state: its token chunks the tier lacks, then its tail's bytes in
  // pieces, then the record that publishes it. A dies after each kind of step.
  it.each(["remote:after-token-chunk@1", "remote:after-chunk@1", "remote:before-publish@1"])(
    "A killed (-9) in the middle of its upload (%s): B never sees part of a state, and answers as a cold run",
    async (crashAt) => {
    const f = fleet({ chunkBytes: 4096 });
    const rootA = tempDir();
    const child = runChild(worker, [modelPath, rootA, JSON.stringify({ redis: f.redis, history: [system, u1], kvCache: "crashy" })], {
      KVKEEP_TEST_CRASH_AT: crashAt,
    });
    expect(await child.exited, child.stderr()).toBe("SIGKILL");
    // A had committed locally before it died in its upload.
    expect((await fs.stat(`${rootA}/crashy/tiny/${configHash}.bin`)).size).toBeGreaterThan(0);
    // B runs the turn A would have answered next.
    const reply = (await cold([system, u1])).trim();
    const second = [system, u1, { role: "assistant", content: reply }, u2];
    const onB = await f.turn(tempDir(), second, "crashy");
    expect(onB.value.stats).toMatchObject({ hit: false, source: "none" });
    expect(onB.value.text).toBe(await cold(second));
    },
  );

  it("delete on A: B misses afterwards", async () => {
    const f = fleet();
    const t1 = await f.turn(tempDir(), [system, u1], "forget-me");
    // Another machine (this process, a store of its own) deletes: the fleet's copy goes.
    const deleter = openKvCacheStore({ root: tempDir(), remote: createRedisTier(f.redis) });
    await deleter.delete({ kvCacheKey: "forget-me" });
    await deleter.close();
    const second = [...withReply([system, u1], t1.value.text), u2];
    const onB = await f.turn(tempDir(), second, "forget-me");
    expect(onB.value.stats).toMatchObject({ hit: false, source: "none" });
  });

  it("a flipped byte in Redis: B misses, logs it, and still answers correctly", async () => {
    const f = fleet({ chunkBytes: 4096 });
    const t1 = await f.turn(tempDir(), [system, u1], "tampered");
    const keys = (await server.cli("--scan", "--pattern", `${f.redis.keyPrefix}{*}:data:*`)).split("\n").filter(Boolean);
    expect(keys).toHaveLength(1);
    const chunk0 = await server.cli("hstrlen", keys[0]!, "0");
    await server.cli("hset", keys[0]!, "0", "x".repeat(Number(chunk0)));
    const second = [...withReply([system, u1], t1.value.text), u2];
    const onB = await f.turn(tempDir(), second, "tampered");
    expect(onB.value.stats).toMatchObject({ hit: false, source: "none" });
    expect(onB.stderr).toContain("remote state is broken");
    expect(onB.value.text).toBe(await cold(second));
  });

  it("two workers racing one named conversation: a third resumes one whole state of the two", async () => {
    const f = fleet();
    const [rootA, rootB] = [tempDir(), tempDir()];
    await Promise.all([f.turn(rootA, [system, u1], "contested"), f.turn(rootB, [system, u2b], "contested")]);
    const [a, b] = (await Promise.all([rootA, rootB].map((root) => fs.readFile(`${root}/contested/tiny/${configHash}.bin`)))) as [Buffer, Buffer];
    // What the fleet holds now is exactly one of the two states, whole.
    const probe = createRedisTier(f.redis);
    const temp = `${tempDir()}/fetched.tmp`;
    const got = await probe.fetchTo({ modelId: "tiny", fingerprint: FINGERPRINT, configHash, cacheKey: "contested" }, temp);
    await probe.close();
    expect(got).toMatchObject({ hit: true });
    const fetched = await fs.readFile(temp);
    expect(fetched.equals(a) || fetched.equals(b)).toBe(true);
    // And a third worker resumes it: the engine loads it and answers as a cold run would.
    const third = [system, u1, { role: "assistant" as const, content: "A riddle." }, u2];
    const onC = await f.turn(tempDir(), third, "contested");
    expect(onC.value.stats.hit).toBe(true);
    expect(onC.value.text).toBe(await cold(third));
  });
});

describe("Redis stopped mid-run (real engine, in process)", () => {
  it("turns keep working on the local tier, and remote use resumes after it comes back", async () => {
    const { model } = await loadFixtureModel("tiny");
    const keyPrefix = `kvkeep:fleet-outage${++tenant}:`;
    const lines: string[] = [];
    const logger = { debug: () => {}, info: (l: string) => lines.push(l), warn: (l: string) => lines.push(l), error: (l: string) => lines.push(l) };
    const tier = createRedisTier({ url: server.url, keyPrefix, timeoutMs: TEST_TIMEOUT_MS });
    const store = openKvCacheStore({ root: tempDir(), logger, remote: tier });
    const adapter = createLlamaCppCompletion({ model, store, contextSize: 512, modelId: "tiny", fingerprint: FINGERPRINT });
    const id = { modelId: "tiny", fingerprint: FINGERPRINT, configHash, cacheKey: "outage" };
    const turn = (history: CacheMessage[]) => adapter.completion({ history, kvCache: "outage", maxTokens: FLEET_MAX_TOKENS, temperature: 0 });
    let closed = false;
    try {
      let history: CacheMessage[] = [system, u1];
      const t1 = await turn(history);
      history = [...withReply(history, t1.text), u2];
      await server.kill();
      const t2 = await turn(history);
      expect(t2.stats.hit).toBe(true); // the local tier carries on
      history = [...withReply(history, t2.text), { role: "user", content: "Once more?" }];
      const t3 = await turn(history);
      expect(t3.stats.hit).toBe(true);
      expect(lines.filter((l) => l.includes("unreachable"))).toHaveLength(1); // one warning per outage
      expect(tier.stats()).toMatchObject({ breaker: "open", outages: 1 });

      await server.restart(); // empty: what was uploaded before is gone
      const deadline = Date.now() + 20_000;
      while (tier.stats().breaker === "open" && Date.now() < deadline) {
        await tier.has(id); // while open, a call past the cooldown starts a background probe
        await new Promise((r) => setTimeout(r, 100));
      }
      expect(tier.stats().breaker).toBe("closed");
      expect(lines.some((l) => l.includes("reachable again"))).toBe(true);
      const t4 = await turn([...withReply(history, t3.text), { role: "user", content: "And now?" }]);
      expect(t4.stats.hit).toBe(true);
      await adapter.dispose();
      await store.close(); // finishes the upload of t4's commit
      closed = true;
      const other = createRedisTier({ url: server.url, keyPrefix, timeoutMs: TEST_TIMEOUT_MS });
      expect(await other.has(id)).toBe(true);
      await other.close();
    } finally {
      if (!closed) {
        await adapter.dispose();
        await store.close();
      }
    }
  });
});
