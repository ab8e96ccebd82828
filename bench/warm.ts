/**
 * Cache warming on the realistic model: the first turn after an idle period (its cache
 * file evicted from the page cache), with and without a preload warm having run during the
 * idle time. Interleaved repeats at ~2000 history tokens, medians, one run.
 *   npx tsx bench/warm.ts
 */
import { mkdtempSync, rmSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { createLlamaCppCompletion, fingerprintModel } from "../src/engines/node-llama-cpp/index.js";
import { generateConfigHash, openKvCacheStore } from "../src/index.js";
import { loadNativeFs } from "../src/native/index.js";
import { createContext, loadFixtureModel } from "../test/fixtures/engine.js";
import { prepareConversation } from "./conversation.js";
import { median, table } from "./lib.js";

const repeats = Number(process.env.BENCH_REPEATS ?? 7);
const CONTEXT = 4096;
const { model, path: modelPath } = await loadFixtureModel("realistic");
const root = mkdtempSync(path.join(os.tmpdir(), "kvkeep-bench-warm-"));
const nativeFs = loadNativeFs();

try {
  const raw = await createContext(model, { contextSize: CONTEXT });
  const fingerprint = await fingerprintModel(model, raw, modelPath);
  const store = openKvCacheStore({ root, onRollback: "keep-committed" });
  const session = store.createSession("bench", { fingerprint });
  const conversation = await prepareConversation(model, raw.getSequence(), 2000, root);
  console.log(`warm benchmark — realistic model, backend ${store.backend} (page-cache eviction: ${nativeFs.kind === "js-fallback" ? "unavailable" : "posix_fadvise DONTNEED"}), ${repeats} repeats, medians`);

  const without: number[] = [];
  const withPreload: number[] = [];
  const preloadMs: number[] = [];
  for (let i = 0; i < repeats; i++) {
    for (const preload of [false, true]) {
      const key = `${preload ? "p" : "n"}${i}`;
      await conversation.commitAs(session, key);
      const cachePath = session.customCachePath(key, generateConfigHash(conversation.history[0]!.content));
      await nativeFs.dropFromPageCache(cachePath); // idle: the OS has evicted the file
      const adapter = createLlamaCppCompletion({ model, store, contextSize: CONTEXT, modelId: "bench", fingerprint });
      if (preload) {
        const started = performance.now();
        const result = await adapter.preloadWarm(key, { cachePath }, { signal: new AbortController().signal });
        if ("error" in result) throw new Error(result.error);
        preloadMs.push(performance.now() - started);
      }
      const { stats } = await adapter.completion({ history: conversation.history, kvCache: key, maxTokens: 1, temperature: 0 });
      (preload ? withPreload : without).push(stats.ttftMs);
      await adapter.dispose();
    }
  }
  const [w, p] = [median(without), median(withPreload)];
  console.log(
    table([
      { "first turn after idle": "without warm", "ttft ms": w, "warm ms (off the turn)": "-" },
      { "first turn after idle": "after a preload warm", "ttft ms": p, "warm ms (off the turn)": median(preloadMs) },
    ]),
  );
  console.log(`with/without preload time to first token: ${(p / w).toFixed(2)}`);
  await raw.dispose();
  await store.close();
} finally {
  rmSync(root, { recursive: true, force: true });
}
process.exit(0);
