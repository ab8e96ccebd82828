/**
 * The adapter's `stop` texts, `finishReason`, `completionTokens`, `commitMs` and
 * `commitFailure` (what an OpenAI-compatible server reports and counts), on the real engine
 * and the tiny generated model.
 */
import { beforeAll, describe, expect, it } from "vitest";
import type { LlamaModel } from "node-llama-cpp";
import { createLlamaCppCompletion } from "../../src/engines/node-llama-cpp/index.js";
import { openKvCacheStore, type CacheMessage } from "../../src/index.js";
import { loadFixtureModel } from "../fixtures/engine.js";
import { tempDir } from "../helpers/temp-root.js";

let model: LlamaModel;
beforeAll(async () => {
  ({ model } = await loadFixtureModel("tiny"));
});

const history: CacheMessage[] = [
  { role: "system", content: "Answer briefly." },
  { role: "user", content: "Name three rivers of Europe." },
];

describe("stop texts and finish reasons", () => {
  it("maxTokens ends the reply with finishReason length after exactly that many tokens", async () => {
    const adapter = createLlamaCppCompletion({ model, store: openKvCacheStore({ root: tempDir() }), contextSize: 512 });
    const { text, stats } = await adapter.completion({ history, kvCache: "s", maxTokens: 12, temperature: 0 });
    expect(stats.finishReason).toBe("length");
    expect(stats.completionTokens).toBe(12);
    expect(model.tokenize(text)).toHaveLength(12); // byte-level vocab: one token per character
    expect(stats.commitMs).toBeGreaterThan(0);
    expect(stats.commitMs).toBeLessThanOrEqual(stats.saveMs);
    await adapter.dispose();
  });

  it("a stop text cuts the reply before it, streams nothing past it, and reports finishReason stop", async () => {
    const adapter = createLlamaCppCompletion({ model, store: openKvCacheStore({ root: tempDir() }), contextSize: 512 });
    const full = await adapter.completion({ history, kvCache: false, maxTokens: 24, temperature: 0 });
    expect(full.text.length).toBeGreaterThan(10);
    const stop = full.text.slice(6, 9);
    const expected = full.text.slice(0, full.text.indexOf(stop));
    let streamed = "";
    const cut = await adapter.completion({
      history,
      kvCache: "stopped",
      maxTokens: 24,
      temperature: 0,
      stop: ["never appears \u0001", stop],
      onToken: (piece) => (streamed += piece),
    });
    expect(cut.text).toBe(expected);
    expect(streamed).toBe(expected);
    expect(cut.stats.finishReason).toBe("stop");
    expect(cut.stats.completionTokens).toBeLessThan(24);
    await expect(adapter.completion({ history, kvCache: false, stop: [""] })).rejects.toMatchObject({ code: "INVALID_ARGUMENT", argument: "stop" });
    await adapter.dispose();
  });

  it("an aborted cold run (kvCache: false) rejects with ABORTED instead of returning a partial reply", async () => {
    const adapter = createLlamaCppCompletion({ model, store: openKvCacheStore({ root: tempDir() }), contextSize: 512 });
    const controller = new AbortController();
    let pieces = 0;
    await expect(
      adapter.completion({
        history,
        kvCache: false,
        maxTokens: 64,
        temperature: 0,
        signal: controller.signal,
        onToken: () => {
          if (++pieces === 3) controller.abort();
        },
      }),
    ).rejects.toMatchObject({ code: "ABORTED" });
    await adapter.dispose();
  });

  it("a commit that fails reports why in stats.commitFailure, and the reply stands", async () => {
    const store = openKvCacheStore({ root: tempDir() });
    const adapter = createLlamaCppCompletion({ model, store, contextSize: 512 });
    let deleted: Promise<void> | undefined;
    const doomed = await adapter.completion({
      history,
      kvCache: "doomed",
      maxTokens: 8,
      temperature: 0,
      onToken: () => {
        deleted ??= store.delete({ kvCacheKey: "doomed" }); // a delete while the turn is open
      },
    });
    await deleted;
    expect(doomed.stats.commitFailure).toBe("deleted-during-turn");
    expect(doomed.text.length).toBeGreaterThan(0);
    const fine = await adapter.completion({ history, kvCache: "fine", maxTokens: 4, temperature: 0 });
    expect(fine.stats.commitFailure).toBeNull();
    expect((await adapter.completion({ history, kvCache: false, maxTokens: 2 })).stats.commitFailure).toBeNull();
    await adapter.dispose();
  });
});
