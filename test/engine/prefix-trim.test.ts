/**
 * Prefix reuse on models whose loaded state cannot be cut back (test/facts/cut-back-facts):
 * a recurrent model (tinyMamba) and a sliding-window one (tinySwa, gemma3). The adapter
 * detects them from the model and starts only from exact ancestors — a cache whose tokens
 * are all a prefix of the prompt — so a regenerate or a new chat starts cold there, while a
 * continuation or a fork of a cached conversation still resumes. Every reply equals a cold
 * run's (greedy). Each reusing turn uses a fresh adapter (a fresh context): only a state
 * file can supply the tokens.
 */
import type { LlamaModel } from "node-llama-cpp";
import { beforeAll, describe, expect, it } from "vitest";
import { createLlamaCppCompletion } from "../../src/engines/node-llama-cpp/index.js";
import { type CacheMessage, openKvCacheStore, type KvCacheStore } from "../../src/index.js";
import { coldGreedyReply, loadFixtureModel, type ChatMessage } from "../fixtures/engine.js";
import { tempDir } from "../helpers/temp-root.js";

const MAX = 12;
const CONTEXT = 1024;
const system: CacheMessage = { role: "system", content: "You answer in one short sentence." };
const u1: CacheMessage = { role: "user", content: "Where does the river go at night when nobody watches it?" };
const u2: CacheMessage = { role: "user", content: "And in the morning, where has it gone?" };

describe.each([
  ["tinyMamba", {}],
  ["tinySwa", {}],
  // A full sliding-window cache in memory does not make a state file hold more than the window.
  ["tinySwa", { swaFullCache: true }],
] as const)("prefix reuse on %s %o (no cutting back)", (name, contextOptions) => {
  let model: LlamaModel;
  beforeAll(async () => {
    model = (await loadFixtureModel(name)).model;
  });

  // One thread: tiny models, and a loaded machine makes a second spinning thread slower.
  const turn = async (store: KvCacheStore, history: CacheMessage[], kvCache: string | boolean) => {
    const adapter = createLlamaCppCompletion({ model, store, contextSize: CONTEXT, threads: 1, contextOptions });
    try {
      return await adapter.completion({ history, kvCache, maxTokens: MAX, temperature: 0 });
    } finally {
      await adapter.dispose();
    }
  };
  const cold = (history: CacheMessage[]) => coldGreedyReply(model, history as ChatMessage[], { contextSize: CONTEXT, maxTokens: MAX });

  it("continues and forks from exact ancestors, starts a regenerate and a new chat cold, and always replies as a cold run", async () => {
    const store = openKvCacheStore({ root: tempDir() });
    const t1 = await turn(store, [system, u1], true);
    const h2 = [system, u1, { role: "assistant", content: t1.text }, u2];
    const t2 = await turn(store, h2, true);
    expect(t2.stats).toMatchObject({ source: "own" }); // the first turn's cache is an exact ancestor
    expect(t2.stats.reusedTokens).toBeGreaterThan(0);
    expect(t2.text).toBe(await cold(h2));
    const full = [...h2, { role: "assistant", content: t2.text }];

    // Regenerate: the only cache holding h2 also holds the reply after it — not an ancestor.
    const regenerate = await turn(store, h2, true);
    expect(regenerate.stats).toMatchObject({ source: "none", reusedTokens: 0 });
    expect(regenerate.text).toBe(t2.text);

    // A new chat with the same system prompt: its prime cannot cut another cache back.
    const newChat = [system, { role: "user", content: "What is heavier, the night or the river?" }];
    const fresh = await turn(store, newChat, "new-chat");
    expect(fresh.stats).toMatchObject({ source: "none", reusedTokens: 0 });
    expect(fresh.text).toBe(await cold(newChat));

    // A named fork continuing the conversation: the conversation's cache is an exact ancestor.
    const fork = [...full, { role: "user", content: "Then follow it." }];
    const forked = await turn(store, fork, "fork");
    expect(forked.stats.source).toBe("prefix");
    expect(forked.stats.reusedTokens).toBeGreaterThan(0);
    expect(forked.text).toBe(await cold(fork));
    await store.close();
  }, 180_000);
});
