/**
 * Auto-key chain speed (issue 10, item 7), side by side in one run: the chain of every
 * prefix of a 1 000-message history (400 characters each)
 * - cold: every message a new object (nothing memoised), vs SHA-256 of JSON.stringify(history);
 * - next turn: the same message objects plus two new ones (the memo hashes only those two).
 * Goals: cold ≤ 1 ms and ≥ 2× faster than the SHA-256; next turn ≤ 0.1 ms.
 *                                                            npx tsx bench/auto-key.ts
 */
import { createHash } from "node:crypto";
import { messageKeyChain } from "../src/keys/auto-key.js";
import { hashReady } from "../src/keys/hash.js";
import type { CacheMessage } from "../src/types.js";
import { median, nowMs, table } from "./lib.js";

const MESSAGES = Number(process.env.BENCH_MESSAGES ?? 1000);
const ROUNDS = 60;

await hashReady;
const words = "the quick brown fox jumps over a lazy dog while kvkeep keeps every cache on disk ".repeat(8);
const history: CacheMessage[] = Array.from({ length: MESSAGES }, (_, i) => ({
  role: i === 0 ? "system" : i % 2 ? "user" : "assistant",
  content: `${i}: ${words}`.slice(0, 400),
}));
const fresh = (): CacheMessage[] => history.map((m) => ({ role: m.role, content: `${m.content}` }));

const samples = { chain: [] as number[], sha: [] as number[], next: [] as number[] };
for (let round = 0; round < ROUNDS; round++) {
  // Cold: new objects (the memo is keyed by object), built outside the timed part.
  const cold = fresh();
  let t = nowMs();
  messageKeyChain(cold);
  samples.chain.push(nowMs() - t);

  t = nowMs();
  createHash("sha256").update(JSON.stringify(cold)).digest("hex");
  samples.sha.push(nowMs() - t);

  // Next turn: the previous turn's objects plus a reply and a new question.
  const next = [...cold, { role: "assistant", content: `reply ${round}` }, { role: "user", content: `question ${round}` }];
  t = nowMs();
  messageKeyChain(next);
  samples.next.push(nowMs() - t);
}

const chain = median(samples.chain.slice(5));
const sha = median(samples.sha.slice(5));
const next = median(samples.next.slice(5));
console.log(`auto-key chain of ${MESSAGES} messages × 400 chars (median of ${ROUNDS - 5} rounds, same run)\n`);
console.log(
  table([
    { what: "chain, cold (new message objects)", ms: chain.toFixed(3), goal: "≤ 1 ms" },
    { what: "SHA-256 of JSON.stringify(history)", ms: sha.toFixed(3), goal: "" },
    { what: "chain, next turn (2 new messages)", ms: next.toFixed(3), goal: "≤ 0.1 ms" },
  ]),
);
console.log(`\nSHA-256 / chain (cold): ${(sha / chain).toFixed(2)}×  (goal ≥ 2×)`);
