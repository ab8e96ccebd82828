// Scratch: where a chunked commit's time goes (not committed).
import { mkdtempSync, promises as fs } from "node:fs";
import { openKvCacheStore } from "../../src/index.js";
import { buildState } from "../../test/chunks/synthetic-state.js";

const layers = Array.from({ length: 8 }, () => ({ kType: 1, kRowBytes: 512, vType: 1, vRowBytes: 512 }));
const chunked = process.env.WHOLE !== "1";
const store = openKvCacheStore({ root: mkdtempSync("/tmp/cp-") });
const session = store.createSession("m", { fingerprint: "fp", ...(chunked ? { chunks: { attentionRotation: "default", sequences: 1 } } : {}) });
const begin = () => session.beginTurn({ kind: "custom", customKey: "k", configHash: "c".repeat(16), primeIfMissing: async (p) => fs.writeFile(p, buildState({ tokenCount: 0, vTrans: false, layers })) });
const times: number[] = [];
for (let i = 0; i < 12; i++) {
  const n = 8000 + 150 * i;
  const turn = await begin();
  await fs.writeFile(turn.savePath, buildState({ tokenCount: n, vTrans: false, layers }));
  const t0 = performance.now();
  await session.commitTurn(turn, { kind: "static", messageCount: 2 + i });
  times.push(performance.now() - t0);
}
const steady = times.slice(2).sort((a, b) => a - b);
console.log(`${chunked ? "chunked" : "whole"}: commit median ${steady[Math.floor(steady.length / 2)]!.toFixed(1)} ms (${steady.map((t) => t.toFixed(1)).join(" ")})`);
await store.close();
