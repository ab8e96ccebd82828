/**
 * Prefix reuse (issue 10), side by side in one run, medians of interleaved repeats:
 *
 * 1. Time to first token on the realistic model (512-dim, 8 layers) at ~2 000 and ~8 000
 *    history tokens, each variant against a cold prefill of the same prompt and against the
 *    floor — node-llama-cpp alone on an existing context loading the same source state,
 *    cut at the same token, evaluating the same rest:
 *      regenerate   — the last user message again; its auto cache was moved to the key of
 *                     history + reply, so only a longer cache holds it (cut back by tokens);
 *      edit-last    — the last user message changed;
 *      new chat     — the same ~T-token system prompt and a ~100-token question.
 *    Goals: regenerate/cold ≤ 0.10 at ~2 000; new chat/cold ≤ 0.15 (2 000-token system prompt).
 * 2. `store.findPrefix` at 10 000 caches (fabricated on disk with real manifests and chains,
 *    found by a freshly opened store): goal ≤ 5 ms.
 *
 *   npx tsx bench/prefix.ts        (BENCH_TARGETS=2000,8000  BENCH_REPEATS=3  BENCH_CACHES=10000)
 */
import { writeRootMarker } from "../src/durable/root-marker.js";
import { randomBytes } from "node:crypto";
import { promises as fs, mkdtempSync, rmSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { createLlamaCppCompletion, modelIdFromModel } from "../src/engines/node-llama-cpp/index.js";
import { type CacheMessage, generateConfigHash, openKvCacheStore } from "../src/index.js";
import { messageKeyChain } from "../src/keys/index.js";
import { hashReady, xxh64Hex } from "../src/keys/hash.js";
import { cachePathOf, manifestPathOf } from "../src/layout/paths.js";
import { MANIFEST_FORMAT, serializeManifest } from "../src/manifest/format.js";
import { KvCacheStoreImpl } from "../src/facade/kvkeep-store.js";
import { createContext, loadFixtureModel, renderChat, type ChatMessage } from "../test/fixtures/engine.js";
import { median, nowMs, table } from "./lib.js";

const targets = (process.env.BENCH_TARGETS ?? "2000,8000").split(",").map(Number);
const repeats = Number(process.env.BENCH_REPEATS ?? 3);
const cacheCount = Number(process.env.BENCH_CACHES ?? 10_000);
const dir = mkdtempSync(path.join(os.tmpdir(), "kvkeep-bench-prefix-"));

/** About `tokens` tokens of text (byte-level vocab: one token per character). */
const text = (seed: string, tokens: number): string => `${seed}: `.concat("the policy says be helpful and brief. ".repeat(Math.ceil(tokens / 38))).slice(0, tokens);

async function engineRows(): Promise<Array<Record<string, string | number>>> {
  const { model } = await loadFixtureModel("realistic");
  const rows: Array<Record<string, string | number>> = [];
  for (const target of targets) {
    const contextSize = Math.max(4096, Math.ceil((target + 512) / 1024) * 1024);
    const store = openKvCacheStore({ root: path.join(dir, `engine-${target}`) });
    const adapter = createLlamaCppCompletion({ model, store, contextSize });
    const cold = createLlamaCppCompletion({ model, store, contextSize });
    const raw = await createContext(model, { contextSize });
    const rawSequence = raw.getSequence();
    const system: CacheMessage = { role: "system", content: text("system", target - 300) };
    const configHash = generateConfigHash(system.content);
    const modelId = modelIdFromModel(model);
    // The conversation whose caches the variants start from: two auto turns.
    const h1 = [system, { role: "user", content: text("question one", 80) }];
    const a1 = (await adapter.completion({ history: h1, kvCache: true, maxTokens: 24, temperature: 0 })).text;
    const h2 = [...h1, { role: "assistant", content: a1 }, { role: "user", content: text("question two", 80) }];
    await adapter.completion({ history: h2, kvCache: true, maxTokens: 24, temperature: 0 });

    const variants: Array<{ name: string; history: CacheMessage[] }> = [
      { name: "regenerate", history: h2 },
      { name: "edit-last", history: [...h2.slice(0, -1), { role: "user", content: text("question two, edited", 80) }] },
      { name: "new chat", history: [system, { role: "user", content: text("a new question", 100) }] },
    ];
    for (const variant of variants) {
      const samples = { cold: [] as number[], reuse: [] as number[], floor: [] as number[] };
      const prompt2 = renderChat(model, variant.history as ChatMessage[]);
      let reused = 0;
      let prompt = 0;
      let source = "";
      for (let i = 0; i < repeats; i++) {
        samples.cold.push((await cold.completion({ history: variant.history, kvCache: false, maxTokens: 1, temperature: 0 })).stats.ttftMs);
        const result = await adapter.completion({ history: variant.history, kvCache: true, maxTokens: 1, temperature: 0 });
        samples.reuse.push(result.stats.ttftMs);
        ({ reusedTokens: reused, promptTokens: prompt, source } = result.stats);
        if (result.stats.sourceKey) {
          // The floor: the engine alone loads the same source, cuts at the same token, evaluates the rest.
          const sourcePath = cachePathOf(store.root, { scopeId: null, cacheKey: result.stats.sourceKey, modelId, configHash });
          const start = nowMs();
          await rawSequence.loadStateFromFile(sourcePath, { acceptRisk: true });
          await rawSequence.eraseContextTokenRanges([{ start: reused, end: rawSequence.nextTokenIndex }]);
          for await (const _token of rawSequence.evaluate(prompt2.slice(reused), { temperature: 0, yieldEogToken: true })) break;
          samples.floor.push(nowMs() - start);
        }
        // Keep every repeat the same: drop the cache this turn committed (unless it is the
        // source itself — a regenerate's greedy reply lands on the source's key).
        const target = store.createSession(modelId).autoCachePath(configHash, [...variant.history, { role: "assistant", content: result.text }]);
        const key = path.basename(path.dirname(path.dirname(target)));
        if (result.stats.sourceKey !== key) await store.delete({ kvCacheKey: key });
      }
      const [c, r, f] = [median(samples.cold), median(samples.reuse), median(samples.floor)];
      rows.push({ tokens: prompt, variant: variant.name, source, reused, "cold ms": c, "reuse ms": r, "floor ms": f, "reuse/cold": r / c, "reuse/floor": r / f });
    }
    await adapter.dispose();
    await cold.dispose();
    await raw.dispose();
    await store.close();
  }
  return rows;
}

/** `n` caches with real manifests and chains (3–9 messages each, one system prompt), fabricated on disk. */
async function fabricate(root: string, n: number): Promise<CacheMessage[]> {
  writeRootMarker(root); // a root kvkeep made (a store refuses a foreign directory)
  const configHash = generateConfigHash("bench system prompt");
  const system: CacheMessage = { role: "system", content: "bench system prompt" };
  const state = randomBytes(2048);
  let last: CacheMessage[] = [];
  let next = 0;
  await Promise.all(
    Array.from({ length: 64 }, async () => {
      for (let i = next++; i < n; i = next++) {
        const history: CacheMessage[] = [system];
        for (let m = 0; m < 2 + (i % 4); m++) history.push({ role: "user", content: `conversation ${i} question ${m}` }, { role: "assistant", content: `answer ${m}` });
        const chain = messageKeyChain(history).keys().slice(1);
        const cacheKey = `auto-${chain.at(-1)}`;
        const cachePath = cachePathOf(root, { scopeId: null, cacheKey, modelId: "bench", configHash });
        await fs.mkdir(path.dirname(cachePath), { recursive: true });
        await fs.writeFile(cachePath, state);
        const st = await fs.stat(cachePath, { bigint: true });
        const entry = {
          size: state.length,
          ino: st.ino.toString(),
          mtimeNs: st.mtimeNs.toString(),
          xxh64: xxh64Hex(state),
          messageCount: history.length,
          tokenCount: null,
          committedAt: Date.now(),
          chain,
        };
        const manifest = { format: MANIFEST_FORMAT, kind: "auto", modelId: "bench", fingerprint: null, configHash, cacheKey, current: entry, pending: null } as const;
        await fs.writeFile(manifestPathOf(cachePath), serializeManifest(manifest));
        if (i === n - 1) last = history;
      }
    }),
  );
  return last;
}

async function lookupRows(): Promise<Array<Record<string, string | number>>> {
  await hashReady;
  const root = path.join(dir, "lookup");
  let t = nowMs();
  const last = await fabricate(root, cacheCount);
  const fabricateMs = nowMs() - t;
  t = nowMs();
  const store = new KvCacheStoreImpl({ root });
  await store.ready;
  const openMs = nowMs() - t;
  const configHash = generateConfigHash("bench system prompt");
  const queries: Array<{ name: string; history: CacheMessage[] }> = [
    { name: "regenerate (longest cache)", history: last.slice(0, -1) },
    { name: "new chat (system prompt only)", history: [last[0]!, { role: "user", content: "a question nobody asked" }] },
    { name: "miss (other config)", history: [{ role: "system", content: "other" }] },
  ];
  const rows: Array<Record<string, string | number>> = [];
  for (const q of queries) {
    const samples: number[] = [];
    let found = "";
    for (let i = 0; i < 101; i++) {
      // New message objects each time: the chain memo does not help.
      const history = q.history.map((m) => ({ ...m }));
      const s = nowMs();
      const match = await store.findPrefix({ modelId: "bench", configHash: q.name.startsWith("miss") ? generateConfigHash("other") : configHash, history });
      samples.push(nowMs() - s);
      found = match ? `${match.commonMessages} of ${history.length} messages` : "none";
    }
    rows.push({ caches: cacheCount, query: q.name, found, "findPrefix ms (median)": median(samples), "p95 ms": samples.sort((a, b) => a - b)[95]! });
  }
  console.log(`fabricated ${cacheCount} caches in ${(fabricateMs / 1000).toFixed(1)} s; a fresh store indexed them in ${(openMs / 1000).toFixed(2)} s (walk + manifests)`);
  const heap = process.memoryUsage().heapUsed;
  await store.close();
  console.log(`heap in use with the index: ${(heap / 1024 / 1024).toFixed(0)} MiB`);
  return rows;
}

try {
  console.log(`prefix reuse benchmark — ${os.availableParallelism()} threads, ${repeats} repeats, medians\n`);
  console.log(table(await lookupRows()));
  console.log("goal: findPrefix ≤ 5 ms at 10 000 caches\n");
  console.log(table(await engineRows()));
  console.log("goals: regenerate/cold ≤ 0.10 at ~2 000 tokens; new chat/cold ≤ 0.15 with a ~2 000-token system prompt");
} finally {
  rmSync(dir, { recursive: true, force: true });
}
process.exit(0);
