/**
 * kvkeep/qvac's stats under Node, over a stand-in for the addon (fixtures/fake-addon.ts) on
 * a real store: whether a turn resumed its cache is kvkeep's knowledge, not the addon's —
 * so `hit` and `source` are right with or without the addon's `opts: { stats: true }`. The
 * real addon under Bare: test/bare/qvac.test.ts.
 */
import { describe, expect, it } from "vitest";
import { COMPLETION_STATS_FIELDS } from "../../src/engines/shared/stats.js";
import { createQvacCompletion } from "../../src/engines/qvac/index.js";
import { openKvCacheStore } from "../../src/index.js";
import { tempDir } from "../helpers/temp-root.js";
import { FakeQvacModel } from "./fixtures/fake-addon.js";

const S = { role: "system", content: "Be brief." };
const U1 = { role: "user", content: "Hello there" };
const U2 = { role: "user", content: "Tell me more" };

describe.each([true, false])("kvkeep/qvac stats, addon stats %s", (addonStats) => {
  it("a resumed conversation is a hit from its own cache; a primed one, a stale one and an uncached call are not", async () => {
    const root = tempDir();
    const llm = createQvacCompletion({ model: new FakeQvacModel({ stats: addonStats }), store: openKvCacheStore({ root }), modelId: "m", fingerprint: "fp" });
    const first = await llm.completion({ history: [S, U1], kvCache: "chat" });
    expect(first.stats).toMatchObject({ hit: false, source: "none", sourceKey: null, reusedTokens: 0, committed: true, commitFailure: null });
    const h2 = [S, U1, { role: "assistant", content: first.text }, U2];
    // A fresh adapter and model: the resume comes from the committed file.
    const again = createQvacCompletion({ model: new FakeQvacModel({ stats: addonStats }), store: openKvCacheStore({ root }), modelId: "m", fingerprint: "fp" });
    const resumed = await again.completion({ history: h2, kvCache: "chat" });
    expect(resumed.stats).toMatchObject({ hit: true, source: "own", sourceKey: "chat", committed: true });
    // The counts are the addon's: with its stats, the committed state's tokens were reused.
    if (addonStats) {
      expect(resumed.stats.reusedTokens).toBeGreaterThan(first.stats.promptTokens);
      expect(resumed.stats.completionTokens).toBe(resumed.text.length);
    } else {
      expect(resumed.stats).toMatchObject({ promptTokens: 0, reusedTokens: 0, evaluatedTokens: 0, completionTokens: 0 });
    }
    const stale = await again.completion({ history: [S, U2], kvCache: "chat" }); // 2 messages; the cache holds 5
    expect(stale.stats).toMatchObject({ hit: false, source: "none", reusedTokens: 0, committed: true });
    const uncached = await again.completion({ history: h2, kvCache: false });
    expect(uncached.stats).toMatchObject({ hit: false, source: "none", committed: false, commitFailure: null, saveMs: 0 });
    for (const { stats } of [first, resumed, stale, uncached]) {
      expect(Object.keys(stats).sort()).toEqual(Object.keys(COMPLETION_STATS_FIELDS).sort());
      expect(stats.evaluatedTokens).toBe(stats.promptTokens - stats.reusedTokens);
    }
  });
});
