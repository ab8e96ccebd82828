/**
 * One `completion()` shape for every adapter (DESIGN §5): the node-llama-cpp and QVAC
 * adapters resolve the same `CompletionStats` type, and fill every one of its fields at run
 * time — node-llama-cpp on the real engine, QVAC over its Node stand-in here (and the real
 * addon under Bare in test/bare/qvac.test.ts).
 */
import { beforeAll, describe, expect, expectTypeOf, it } from "vitest";
import type { LlamaModel } from "node-llama-cpp";
import { createLlamaCppCompletion, type CompletionResult, type CompletionStats, type LlamaCppCompletion } from "../../src/engines/node-llama-cpp/index.js";
import { createQvacCompletion, type QvacCompletion, type QvacCompletionResult, type QvacCompletionStats } from "../../src/engines/qvac/index.js";
import { COMPLETION_STATS_FIELDS, type CompletionStats as SharedStats } from "../../src/engines/shared/stats.js";
import { openKvCacheStore } from "../../src/index.js";
import { loadFixtureModel } from "../fixtures/engine.js";
import { tempDir } from "../helpers/temp-root.js";
import { FakeQvacModel } from "../qvac/fixtures/fake-addon.js";

let model: LlamaModel;
beforeAll(async () => {
  ({ model } = await loadFixtureModel("tiny"));
});

const S = { role: "system", content: "Be brief." };
const U1 = { role: "user", content: "Hello there" };
const U2 = { role: "user", content: "Tell me more" };
const FIELDS = Object.keys(COMPLETION_STATS_FIELDS).sort();

describe("both adapters' stats", () => {
  it("are one type: completion() resolves the same result type on node-llama-cpp and QVAC", () => {
    type LlamaResult = Awaited<ReturnType<LlamaCppCompletion["completion"]>>;
    type QvacResult = Awaited<ReturnType<QvacCompletion["completion"]>>;
    expectTypeOf<LlamaResult>().toEqualTypeOf<QvacResult>();
    expectTypeOf<LlamaResult["stats"]>().toEqualTypeOf<SharedStats>();
    expectTypeOf<CompletionStats>().toEqualTypeOf<QvacCompletionStats>();
    expectTypeOf<CompletionResult>().toEqualTypeOf<QvacCompletionResult>();
    // Every field is listed in COMPLETION_STATS_FIELDS (a record of the type's keys).
    expectTypeOf<keyof typeof COMPLETION_STATS_FIELDS>().toEqualTypeOf<keyof SharedStats>();
  });

  it("carry every field at run time, uncached, cold and resumed, on both adapters", async () => {
    const llama = createLlamaCppCompletion({ model, store: openKvCacheStore({ root: tempDir() }), threads: 1, contextSize: 512 });
    const qvac = createQvacCompletion({ model: new FakeQvacModel({ stats: true }), store: openKvCacheStore({ root: tempDir() }), modelId: "m", fingerprint: "fp" });
    for (const [name, run] of [
      ["node-llama-cpp", (p: { history: typeof S[]; kvCache: string | boolean }) => llama.completion({ ...p, maxTokens: 8, temperature: 0 })],
      ["qvac", (p: { history: typeof S[]; kvCache: string | boolean }) => qvac.completion(p)],
    ] as const) {
      const uncached = await run({ history: [S, U1], kvCache: false });
      const cold = await run({ history: [S, U1], kvCache: "chat" });
      const resumed = await run({ history: [S, U1, { role: "assistant", content: cold.text }, U2], kvCache: "chat" });
      for (const [path, { stats }] of [["uncached", uncached], ["cold", cold], ["resumed", resumed]] as const) {
        expect(Object.keys(stats).sort(), `${name} ${path}`).toEqual(FIELDS);
      }
      expect(uncached.stats, name).toMatchObject({ hit: false, source: "none", committed: false, commitFailure: null });
      expect(cold.stats, name).toMatchObject({ hit: false, source: "none", committed: true, commitFailure: null });
      expect(resumed.stats, name).toMatchObject({ hit: true, source: "own", sourceKey: "chat", committed: true });
    }
    await llama.dispose();
    await qvac.dispose();
  });
});
