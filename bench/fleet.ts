/**
 * The Redis tier, side by side in one run, on a redis-server this benchmark starts on a free
 * loopback port (Debian's `redis-server`, as the tests use):
 *
 *   1. Worker B resumes a ~2 000-token conversation that worker A committed and uploaded,
 *      on the realistic model (512-dim, 8 layers): time to first token through the adapter
 *      with the state downloaded from Redis (lookup, streamed download, verify, install,
 *      load, evaluate the new tokens) vs a cold prefill of the same prompt. Goal ≤ 0.15.
 *   2. Upload and download throughput of that state through the tier (chunked, hashed,
 *      verified, from and to a file) vs a raw node-redis SET/GET loop of the same bytes in
 *      the same chunks from and to memory — sequential, and pipelined like the tier.
 *      Goal ≥ 0.8× the raw loop.
 *   3. Lookup latency: `has()` (the record), `fetchTo` of a key that is not there, and a
 *      prefix lookup of a 41-message history that finds a state covering 30 of them (the
 *      index, then the record). Goal: p50 ≤ 1 ms.
 *
 *   npx tsx bench/fleet.ts        (BENCH_REPEATS=5 by default)
 */
import { mkdtempSync, promises as fs, rmSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { createClient, RESP_TYPES } from "redis";
import { createLlamaCppCompletion, fingerprintModel } from "../src/engines/node-llama-cpp/index.js";
import { type CacheMessage, generateConfigHash, openKvCacheStore } from "../src/index.js";
import { messageKeyChain } from "../src/keys/auto-key.js";
import { xxh64Hex } from "../src/keys/hash.js";
import { createRedisTier, DEFAULT_CHUNK_BYTES } from "../src/remote/redis/index.js";
import { createContext, loadFixtureModel } from "../test/fixtures/engine.js";
import { startRedis } from "../test/remote/helpers/redis-server.js";
import { prepareConversation } from "./conversation.js";
import { median, nowMs, table } from "./lib.js";

const repeats = Number(process.env.BENCH_REPEATS ?? 5);
const CONTEXT = 4096;
const PIPELINE = 4; // the tier keeps this many chunk commands in flight
const server = await startRedis({ args: ["--maxmemory", "2gb", "--maxmemory-policy", "allkeys-lru"] });
const dir = mkdtempSync(path.join(os.tmpdir(), "kvkeep-bench-fleet-"));
const percentile = (values: number[], p: number): number => [...values].sort((a, b) => a - b)[Math.min(values.length - 1, Math.floor(values.length * p))]!;

try {
  const { model, path: modelPath } = await loadFixtureModel("realistic");
  const raw = await createContext(model, { contextSize: CONTEXT });
  const sequence = raw.getSequence();
  const fingerprint = await fingerprintModel(model, raw, modelPath);
  const conversation = await prepareConversation(model, sequence, 2000, dir);
  const configHash = generateConfigHash(conversation.history[0]!.content);
  const url = server.url;
  console.log(`fleet benchmark — realistic model, ${os.availableParallelism()} threads, redis-server on loopback, ${repeats} repeats, medians`);

  // ── 1. B resumes from Redis vs cold ─────────────────────────────────────────────────
  // Worker A commits the state under one key per repeat (a real commit: uploaded on close).
  const storeA = openKvCacheStore({ root: path.join(dir, "a"), onRollback: "keep-committed", remote: createRedisTier({ url }) });
  const sessionA = storeA.createSession("bench", { fingerprint });
  const stateBytes = (await fs.stat(conversation.statePath)).size;
  const covered = conversation.history.length - 1; // everything before the new user message
  for (let i = 0; i < repeats; i++) {
    const turn = await sessionA.beginTurn({
      kind: "custom",
      customKey: `fleet-${i}`,
      configHash,
      primeIfMissing: (p) => fs.copyFile(conversation.statePath, p),
    });
    await fs.copyFile(conversation.statePath, turn.savePath);
    await sessionA.commitTurn(turn, { kind: "static", messageCount: covered });
  }
  await storeA.close(); // finishes the uploads

  // Each repeat is a fresh worker B (its own empty root, its own connection): the first
  // completion (cold, kvCache: false) also creates its context, then B resumes A's key.
  const cold: number[] = [];
  const fromRedis: number[] = [];
  let reused = 0;
  for (let i = 0; i < repeats; i++) {
    const storeB = openKvCacheStore({ root: path.join(dir, `b${i}`), onRollback: "keep-committed", remote: createRedisTier({ url }) });
    // prefixReuse off: B resumes exactly its own key (earlier Bs uploaded longer states of this
    // conversation, which the adapter would otherwise rightly prefer — and also fetch from Redis).
    const adapterB = createLlamaCppCompletion({ model, store: storeB, contextSize: CONTEXT, modelId: "bench", fingerprint, prefixReuse: false });
    cold.push((await adapterB.completion({ history: conversation.history, kvCache: false, maxTokens: 1, temperature: 0 })).stats.ttftMs);
    const r = await adapterB.completion({ history: conversation.history, kvCache: `fleet-${i}`, maxTokens: 1, temperature: 0 });
    if (r.stats.source !== "own") throw new Error(`worker B did not resume fleet-${i} from Redis (${r.stats.source})`);
    fromRedis.push(r.stats.ttftMs);
    reused = r.stats.reusedTokens;
    await adapterB.dispose();
    await storeB.close(); // B's own commit uploads before the next sample
  }
  const [c, r] = [median(cold), median(fromRedis)];
  console.log(
    "\n" +
      table([
        {
          "prompt tokens": conversation.prompt.length,
          "from Redis": reused,
          "state MB": stateBytes / 1e6,
          "cold ms": c,
          "resumed from Redis ms": r,
          "resumed/cold": r / c,
        },
      ]),
  );
  console.log("goal: resumed from Redis / cold ≤ 0.15 (the download on loopback included)");

  // ── 2. throughput vs a raw SET/GET loop of the same bytes ──────────────────────────
  const tier = createRedisTier({ url, keyPrefix: "kvkeep:bench-throughput:" });
  const client = await createClient({ url }).connect();
  const binary = client.withTypeMapping({ [RESP_TYPES.BLOB_STRING]: Buffer });
  const bytes = await fs.readFile(conversation.statePath);
  const chunks: Buffer[] = [];
  for (let off = 0; off < bytes.length; off += DEFAULT_CHUNK_BYTES) chunks.push(bytes.subarray(off, off + DEFAULT_CHUNK_BYTES));
  const xxh64 = xxh64Hex(bytes);
  const samples = { tierUp: [] as number[], tierDown: [] as number[], rawSet: [] as number[], rawGet: [] as number[], pipeSet: [] as number[], pipeGet: [] as number[] };
  const inPipeline = async (work: Array<() => Promise<unknown>>): Promise<void> => {
    const running: Array<Promise<unknown>> = [];
    for (const w of work) {
      running.push(w());
      if (running.length >= PIPELINE) await running.shift();
    }
    await Promise.all(running);
  };
  for (let i = 0; i < repeats; i++) {
    const id = { modelId: "bench", fingerprint, configHash, cacheKey: `throughput-${i}` };
    const reserved = await tier.reserve(id);
    if (!reserved.ok) throw new Error("reserve failed");
    const handle = await fs.open(conversation.statePath, "r");
    let t = nowMs();
    const up = await tier.upload(reserved.ticket, { id, size: bytes.length, xxh64, messageCount: covered, tokenCount: null, chain: null, committedAt: Date.now() }, handle);
    samples.tierUp.push(nowMs() - t);
    await handle.close();
    if (up.outcome !== "published") throw new Error(`upload ${up.outcome}`);
    const temp = path.join(dir, `down-${i}.tmp`);
    t = nowMs();
    const down = await tier.fetchTo(id, temp);
    samples.tierDown.push(nowMs() - t);
    if (!down.hit) throw new Error(`download missed: ${down.reason}`);
    await fs.rm(temp);

    t = nowMs();
    for (let k = 0; k < chunks.length; k++) await client.set(`bench:raw:${i}:${k}`, chunks[k]!);
    samples.rawSet.push(nowMs() - t);
    t = nowMs();
    for (let k = 0; k < chunks.length; k++) await binary.get(`bench:raw:${i}:${k}`);
    samples.rawGet.push(nowMs() - t);
    t = nowMs();
    await inPipeline(chunks.map((chunk, k) => () => client.set(`bench:pipe:${i}:${k}`, chunk)));
    samples.pipeSet.push(nowMs() - t);
    t = nowMs();
    await inPipeline(chunks.map((_, k) => () => binary.get(`bench:pipe:${i}:${k}`)));
    samples.pipeGet.push(nowMs() - t);
  }
  const mbps = (ms: number): number => bytes.length / 1e6 / (ms / 1000);
  const m = Object.fromEntries(Object.entries(samples).map(([k, v]) => [k, mbps(median(v))])) as Record<keyof typeof samples, number>;
  console.log(
    "\n" +
      table([
        { direction: "upload", "tier MB/s": m.tierUp, "raw loop MB/s": m.rawSet, "raw pipelined MB/s": m.pipeSet, "tier/raw loop": m.tierUp / m.rawSet, "tier/raw pipelined": m.tierUp / m.pipeSet },
        { direction: "download", "tier MB/s": m.tierDown, "raw loop MB/s": m.rawGet, "raw pipelined MB/s": m.pipeGet, "tier/raw loop": m.tierDown / m.rawGet, "tier/raw pipelined": m.tierDown / m.pipeGet },
      ]),
  );
  console.log(`goal: tier ≥ 0.8× the raw loop (${(bytes.length / 1e6).toFixed(1)} MB in ${chunks.length} chunks of ${DEFAULT_CHUNK_BYTES / 1024} KiB; the tier also reads/writes the file and hashes)`);

  // ── 3. lookup latency ───────────────────────────────────────────────────────────────
  const history: CacheMessage[] = [{ role: "system", content: "Be brief." }];
  for (let k = 0; k < 20; k++) history.push({ role: "user", content: `question ${k}` }, { role: "assistant", content: `answer ${k}` });
  const historyKeys = messageKeyChain(history).keys().slice(1);
  // A state covering the first 30 messages, so the prefix lookup below is a hit (index + record).
  const prefixState = path.join(dir, "prefix.bin");
  await fs.writeFile(prefixState, bytes.subarray(0, 4096));
  const prefixId = { modelId: "bench", fingerprint, configHash, cacheKey: "prefix-source" };
  const prefixTicket = await tier.reserve(prefixId);
  if (!prefixTicket.ok) throw new Error("reserve failed");
  const prefixHandle = await fs.open(prefixState, "r");
  await tier.upload(
    prefixTicket.ticket,
    { id: prefixId, size: 4096, xxh64: xxh64Hex(bytes.subarray(0, 4096)), messageCount: 30, tokenCount: null, chain: historyKeys.slice(0, 30), committedAt: Date.now() },
    prefixHandle,
  );
  await prefixHandle.close();
  const lookups = { has: [] as number[], absent: [] as number[], prefix: [] as number[] };
  const known = { modelId: "bench", fingerprint, configHash, cacheKey: "throughput-0" };
  for (let i = 0; i < 1000; i++) {
    let t = nowMs();
    await tier.has(known);
    lookups.has.push(nowMs() - t);
    t = nowMs();
    await tier.fetchTo({ ...known, cacheKey: `absent-${i}` }, path.join(dir, "absent.tmp"));
    lookups.absent.push(nowMs() - t);
    t = nowMs();
    const hit = await tier.lookupPrefix({ modelId: "bench", fingerprint, configHash }, historyKeys);
    lookups.prefix.push(nowMs() - t);
    if (hit?.commonMessages !== 30) throw new Error("the prefix lookup did not find the 30-message state");
  }
  console.log(
    "\n" +
      table(
        Object.entries(lookups).map(([name, v]) => ({ lookup: name, "p50 ms": percentile(v, 0.5), "p99 ms": percentile(v, 0.99) })),
      ),
  );
  console.log("goal: remote lookup p50 ≤ 1 ms");
  client.destroy();
  await tier.close();
  await raw.dispose();
} finally {
  await server.stop();
  rmSync(dir, { recursive: true, force: true });
}
process.exit(0);
