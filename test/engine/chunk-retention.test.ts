/**
 * Chunk retention through real sessions on the real engine (the tiny generated model, one
 * token per byte): three chunked conversations sharing a system prompt are stored with the
 * prompt's chunks once (usage() physical < logical, its figures the bytes on disk); deleting
 * one and sweeping collects exactly the chunks only it named; the others keep every chunk and
 * resume from them with every token they had committed (a hit from their own chunks, not a re-prime).
 */
import { readdirSync, statSync } from "node:fs";
import path from "node:path";
import type { LlamaModel } from "node-llama-cpp";
import { beforeAll, describe, expect, it } from "vitest";
import { createLlamaCppCompletion } from "../../src/engines/node-llama-cpp/index.js";
import { type CacheMessage, type KvCacheStore, openKvCacheStore } from "../../src/index.js";
import { committedEntry, committedTokens } from "../helpers/committed-state.js";
import { tempDir } from "../helpers/temp-root.js";
import { loadFixtureModel } from "../fixtures/engine.js";

let model: LlamaModel;
beforeAll(async () => {
  ({ model } = await loadFixtureModel("tiny"));
});

const MAX = 8;
const system: CacheMessage = { role: "system", content: "You are a careful assistant who keeps every answer short and plain. ".repeat(10) };
/** A first message of its own long enough to fill chunks no other conversation has. */
const opener = (topic: string): CacheMessage => ({ role: "user", content: `Let us talk about ${topic}. ${`Some background on ${topic} for you to weigh. `.repeat(14)}` });

async function turn(store: KvCacheStore, history: CacheMessage[], kvCache: string) {
  const adapter = createLlamaCppCompletion({ threads: 1, model, store, contextSize: 2048, chunkedStates: true });
  try {
    return await adapter.completion({ history, kvCache, maxTokens: MAX, temperature: 0 });
  } finally {
    await adapter.dispose();
  }
}

/** Chunk files on disk: `<context>/<id>` → bytes. */
function chunksOnDisk(root: string): Map<string, number> {
  const out = new Map<string, number>();
  const base = path.join(root, ".kvkeep", "chunks");
  for (const context of readdirSync(base)) {
    for (const fan of readdirSync(path.join(base, context))) {
      for (const name of readdirSync(path.join(base, context, fan))) {
        if (name.endsWith(".kvkc")) out.set(`${context}/${name.slice(0, -5)}`, statSync(path.join(base, context, fan, name)).size);
      }
    }
  }
  return out;
}

describe("chunk retention through sessions", () => {
  it("stores a shared system prompt's chunks once; deleting one conversation and sweeping frees only its own chunks; the others resume with every token they committed", async () => {
    const root = tempDir();
    const store = openKvCacheStore({ root });
    try {
      const chats = ["gardens", "rivers", "bridges"].map((topic, i) => ({ key: `chat-${i}`, history: [system, opener(topic)] }));
      for (const chat of chats) {
        const t = await turn(store, chat.history, chat.key);
        expect(t.stats).toMatchObject({ layout: "chunked", committed: true });
        chat.history = [...chat.history, { role: "assistant", content: t.text }];
      }
      const cachePaths = chats.map((c) => path.join(root, c.key, modelDir(root, c.key), `${configOf(root, c.key)}.bin`));
      const entries = await Promise.all(cachePaths.map((c) => committedEntry(c)));
      const committed = await Promise.all(cachePaths.map((c) => committedTokens(c, root)));
      const ids = entries.map((e) => e.chunks!.ids.map((id) => `${e.chunks!.context}/${id}`));
      const shared = ids[0]!.filter((id) => ids[1]!.includes(id) && ids[2]!.includes(id));
      const own0 = ids[0]!.filter((id) => !ids[1]!.includes(id) && !ids[2]!.includes(id));
      expect(shared.length).toBeGreaterThanOrEqual(2); // the system prompt's full chunks
      expect(own0.length).toBeGreaterThanOrEqual(1);

      const disk = chunksOnDisk(root);
      const usage = await store.usage();
      expect(usage.chunkCount).toBe(disk.size);
      expect(usage.chunkBytes).toBe([...disk.values()].reduce((a, b) => a + b, 0));
      expect(usage.bytes).toBeLessThan(usage.logicalBytes);
      console.log(`3 chats sharing a ${shared.length}-chunk system prompt: physical ${usage.bytes} B, logical ${usage.logicalBytes} B, sharing ${usage.sharing.toFixed(2)}×`);

      await store.delete({ kvCacheKey: "chat-0" });
      // Chunk GC keeps what was written in the last 2 s: wait that out, as a later sweep would.
      await new Promise((r) => setTimeout(r, 2_100));
      const swept = await store.sweep();
      expect(swept.removedChunks).toBe(own0.length);
      const left = chunksOnDisk(root);
      for (const id of own0) expect(left.has(id)).toBe(false);
      for (const id of [...ids[1]!, ...ids[2]!]) expect(left.has(id)).toBe(true);

      // Each resumes with every token it had committed: the shared chunks, its own, its tail.
      for (const [i, chat] of chats.entries()) {
        if (i === 0) continue;
        const next = await turn(store, [...chat.history, { role: "user", content: "Sum it up in one line." }], chat.key);
        expect(next.stats).toMatchObject({ layout: "chunked", hit: true, source: "own", committed: true, reusedTokens: committed[i]!.length });
      }
    } finally {
      await store.close();
    }
  }, 120_000);
});

/** The one model directory and config hash under a key (the adapter chooses them). */
function modelDir(root: string, key: string): string {
  return readdirSync(path.join(root, key))[0]!;
}
function configOf(root: string, key: string): string {
  const dir = path.join(root, key, modelDir(root, key));
  return readdirSync(dir).find((f) => f.endsWith(".bin"))!.slice(0, -4);
}
