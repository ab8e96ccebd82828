/** The preload warm strategy: a cache loaded into an idle engine makes the next turn skip its load. */
import { beforeAll, describe, expect, it } from "vitest";
import type { LlamaModel } from "node-llama-cpp";
import { createLlamaCppCompletion, modelIdFromModel } from "../../src/engines/node-llama-cpp/index.js";
import { createStoreWarmer, generateConfigHash, openKvCacheStore, type CacheMessage } from "../../src/index.js";
import { loadFixtureModel } from "../fixtures/engine.js";
import { tempDir } from "../helpers/temp-root.js";
import { fakeTimers } from "../warm/helpers.js";

let model: LlamaModel;
beforeAll(async () => {
  ({ model } = await loadFixtureModel("tiny"));
});

const system: CacheMessage = { role: "system", content: "Be brief." };
const u1: CacheMessage = { role: "user", content: "Name a colour." };
const u2: CacheMessage = { role: "user", content: "Another one." };

describe("preloading with the node-llama-cpp adapter", () => {
  it("a warmer's preload loads the settled cache into an idle adapter; its next turn skips the load with the same output", async () => {
    const root = tempDir();
    const writer = createLlamaCppCompletion({ threads: 1, model, store: openKvCacheStore({ root }), contextSize: 512 });
    const t1 = await writer.completion({ history: [system, u1], kvCache: "chat", maxTokens: 16, temperature: 0 });
    await writer.dispose();
    const h2 = [system, u1, { role: "assistant", content: t1.text }, u2];

    // Without preload: a fresh adapter must load the state.
    const plain = createLlamaCppCompletion({ threads: 1, model, store: openKvCacheStore({ root, onRollback: "keep-committed" }), contextSize: 512 });
    const cachePath = openKvCacheStore({ root }).createSession(modelIdFromModel(model)).customCachePath("chat", generateConfigHash("Be brief."));
    const expected = await plain.completion({ history: h2, kvCache: false, maxTokens: 16, temperature: 0 });
    await plain.dispose();

    // With preload, driven by the warmer as an app would wire it.
    const store = openKvCacheStore({ root });
    const adapter = createLlamaCppCompletion({ threads: 1, model, store, contextSize: 512 });
    const timers = fakeTimers();
    const warmer = createStoreWarmer(store, { timers, warm: adapter.preloadWarm });
    warmer.onTurnSettled("chat", { cachePath });
    await warmer.ready("chat");
    timers.fireAll();
    await warmer.ready("chat");
    expect(warmer.getState("chat").lastPct).toBe(100);

    const t2 = await adapter.completion({ history: h2, kvCache: "chat", maxTokens: 16, temperature: 0 });
    expect(t2.stats).toMatchObject({ hit: true, loadMs: 0 });
    expect(t2.text).toBe(expected.text);
    warmer.dispose();
    await adapter.dispose();
  });

  it("preload refuses a cache written for another model", async () => {
    const root = tempDir();
    const store = openKvCacheStore({ root });
    const writer = createLlamaCppCompletion({ threads: 1, model, store, contextSize: 512 });
    await writer.completion({ history: [system, u1], kvCache: "chat", maxTokens: 4, temperature: 0 });
    await writer.dispose();
    const cachePath = store.createSession(modelIdFromModel(model)).customCachePath("chat", generateConfigHash("Be brief."));
    const other = createLlamaCppCompletion({ threads: 1, model, store, contextSize: 1024 }); // another state layout
    expect(await other.preload(cachePath)).toBeNull();
    await other.dispose();
  });
});
