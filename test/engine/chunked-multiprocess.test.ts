/**
 * Chunked conversations committed by several processes at once on one root, on the real
 * engine (the tiny generated model, one token per byte). Three child processes — two named
 * conversations and an auto one — each run several turns of a conversation opening with the
 * same long system prompt (several full chunks), started at the same instant, so their first
 * commits write the same chunks at the same time and every later commit touches them again;
 * meanwhile this process sweeps the root in a loop (chunk GC included), with old unreferenced
 * chunks to collect — among them the system prompt's, left by a deleted conversation, which the
 * racing commits are about to reference again. Then:
 *   - every turn committed, every turn after the first resumed from its own cache, and no
 *     process logged a warning (a chunk missing on load, a cache refused);
 *   - `kvkeep verify` (the built CLI) finds every cache and chunk sound;
 *   - the system prompt's chunks are one file each, named by all three conversations, and the
 *     root holds exactly the chunks the manifests name (the deleted conversation's own are gone);
 *   - a fresh store resumes every conversation with all of its committed tokens.
 * The chunk size is read from the manifests (chunks.chunkTokens), never assumed.
 */
import path from "node:path";
import type { LlamaModel } from "node-llama-cpp";
import { beforeAll, describe, expect, it } from "vitest";
import { DEFAULT_CHUNK_TOKENS } from "../../src/chunks/state-format.js";
import type { CompletionResult } from "../../src/engines/node-llama-cpp/index.js";
import { type CacheMessage, openKvCacheStore } from "../../src/index.js";
import { listChunkFiles } from "../../src/chunkfiles/collect.js";
import { json, kvkeep } from "../cli/helpers.js";
import { type ChildRun, runChild } from "../helpers/child.js";
import { ageChunkFiles, chunkKeysOnDisk } from "../helpers/chunk-root.js";
import { cachePathAfter, chunkedTurn, tinyModelAndChild } from "../helpers/chunked-turn.js";
import { committedEntry, committedTokens } from "../helpers/committed-state.js";
import { tempDir } from "../helpers/temp-root.js";

let model: LlamaModel;
let modelPath: string;
let child: string;
beforeAll(async () => ({ model, modelPath, child } = await tinyModelAndChild("test/engine/fixtures/chunked-conversation-child.ts")));

/** About three and a half chunks of the default size (one token per character). */
const SYSTEM = "You are a patient tutor: answer the question asked, in plain words, and stop. "
  .repeat(Math.ceil((3.5 * DEFAULT_CHUNK_TOKENS) / 78))
  .trim();
const SIZE = { maxTokens: 12, contextSize: SYSTEM.length + 1024 };
const system: CacheMessage = { role: "system", content: SYSTEM };

const CONVERSATIONS: Array<{ kvCache: string | true; users: string[] }> = [
  { kvCache: "chat-a", users: ["Why do rivers bend?", "What makes the outer bank wear away?", "Could a river ever run straight?", "Name one bent river."] },
  { kvCache: "chat-b", users: ["How do bees find flowers?", "Do they remember a good field?", "What do they tell the hive?", "And in winter?"] },
  { kvCache: true, users: ["What keeps a bridge up?", "Why are some bridges arched?", "Which is the longest kind?", "What breaks them?"] },
];

interface ChildReport {
  history: CacheMessage[];
  results: CompletionResult[];
  written: number[];
  problems: string[];
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

describe("chunked conversations committed by several processes at once", () => {
  it("share the system prompt's chunks as one file each, verify clean, and each resumes from a fresh store with all its committed tokens, while a GC sweeps in a loop", async () => {
    const root = tempDir();
    const gcStore = openKvCacheStore({ root });
    let reports: ChildReport[];
    let tokens: number[][];
    let children: ChildRun[] = [];
    try {
      // A deleted conversation with the same system prompt, its chunks long unused: garbage
      // for the GC loop, some of it (the system prompt's) about to be referenced again.
      const doomed = await chunkedTurn(model, gcStore, [system, { role: "user", content: `Tell me about tides. ${"Some notes on tides to weigh. ".repeat(12)}` }], "doomed", SIZE);
      expect(doomed.stats).toMatchObject({ layout: "chunked", committed: true });
      const doomedChunks = (await committedEntry(cachePathAfter(model, gcStore, "doomed", [system]))).chunks!;
      await gcStore.delete({ kvCacheKey: "doomed" });
      await ageChunkFiles(root);

      children = CONVERSATIONS.map((c) => runChild(child, [modelPath, root, JSON.stringify({ system: SYSTEM, users: c.users, kvCache: c.kvCache, ...SIZE })]));
      await Promise.all(children.map((c) => c.waitForLine((l) => l === "ready", 60_000)));
      for (const c of children) c.child.kill("SIGUSR2");
      let running = true;
      const exited = Promise.all(children.map((c) => c.exited)).finally(() => (running = false));
      let sweeps = 0;
      let collected = 0;
      const gcLoop = (async () => {
        while (running) {
          collected += (await gcStore.sweep()).removedChunks;
          sweeps++;
          await sleep(10);
        }
      })();
      const codes = await exited;
      await gcLoop;
      expect(codes, children.map((c) => c.stderr()).join("\n")).toEqual([0, 0, 0]);
      reports = children.map((c) => JSON.parse(c.stdout().trim().split("\n").pop()!) as ChildReport);
      for (const [i, report] of reports.entries()) {
        const what = `conversation ${i} (${String(CONVERSATIONS[i]!.kvCache)})`;
        expect(report.problems, what).toEqual([]);
        expect(report.results.map((r) => r.stats.committed), what).toEqual(report.results.map(() => true));
        for (const r of report.results.slice(1)) expect(r.stats, what).toMatchObject({ layout: "chunked", hit: true, source: "own" });
      }
      console.log(
        `3 processes × ${CONVERSATIONS[0]!.users.length} turns; chunks written per commit (the first: turn 1's prime): ${reports.map((r) => r.written.join("+")).join(", ")}; ` +
          `${sweeps} sweeps meanwhile collected ${collected} chunks`,
      );

      const verify = await kvkeep(["verify", "--root", root, "--json"]);
      expect(verify.code, `${verify.stdout} ${verify.stderr}`).toBe(0);
      expect(json<{ results: Array<{ status: string }> }>(verify).results.map((r) => r.status)).toEqual(CONVERSATIONS.map(() => "ok"));

      const caches = reports.map((r, i) => cachePathAfter(model, gcStore, CONVERSATIONS[i]!.kvCache, r.history));
      const entries = await Promise.all(caches.map(async (c) => (await committedEntry(c)).chunks!));
      tokens = await Promise.all(caches.map((c) => committedTokens(c, root)));
      for (const [i, e] of entries.entries()) expect(e.tokens).toBe(tokens[i]!.length);
      // The prefix all three states share, in whole chunks of the size the manifests name.
      const { chunkTokens, context } = entries[0]!;
      const shortest = Math.min(...tokens.map((t) => t.length));
      let common = 0;
      while (common < shortest && tokens.every((t) => t[common] === tokens[0]![common])) common++;
      const shared = Math.floor(common / chunkTokens);
      expect(shared).toBeGreaterThanOrEqual(3);
      const sharedIds = entries[0]!.ids.slice(0, shared);
      for (const e of entries) {
        expect(e.context).toBe(context);
        expect(e.ids.slice(0, shared)).toEqual(sharedIds);
      }
      const files = (await listChunkFiles(root)).chunks;
      for (const id of sharedIds) expect(files.filter((f) => f.id === id).length, `chunk ${id}`).toBe(1);

      // With the GC margin passed, a sweep leaves exactly the chunks the three manifests name:
      // the shared ones once, each conversation's own, none of the deleted conversation's own.
      await ageChunkFiles(root);
      await gcStore.sweep();
      const named = new Set(entries.flatMap((e) => e.ids.map((id) => `${e.context}/${id}`)));
      expect(named.size).toBe(entries.reduce((n, e) => n + e.ids.length, 0) - 2 * shared);
      expect(doomedChunks.ids.filter((id) => !named.has(`${doomedChunks.context}/${id}`)).length).toBeGreaterThanOrEqual(1);
      expect(await chunkKeysOnDisk(root)).toEqual(named);
    } finally {
      for (const c of children) if (c.child.exitCode === null && c.child.signalCode === null) c.child.kill("SIGKILL");
      await gcStore.close();
    }

    // A fresh store (as after a restart) resumes each conversation with every committed token.
    const fresh = openKvCacheStore({ root });
    try {
      for (const [i, report] of reports.entries()) {
        const { kvCache } = CONVERSATIONS[i]!;
        const next = await chunkedTurn(model, fresh, [...report.history, { role: "user", content: "Sum that up in five words." }], kvCache, SIZE);
        expect(next.stats, `conversation ${i} (${String(kvCache)})`).toMatchObject({ layout: "chunked", hit: true, source: "own", committed: true, reusedTokens: tokens[i]!.length });
      }
    } finally {
      await fresh.close();
    }
  }, 300_000);
});
