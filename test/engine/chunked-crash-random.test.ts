/**
 * A chunked commit SIGKILLed at random instants, on the real engine (the tiny generated
 * model) in real child processes, in named and in auto mode. chunked-turns.test.ts kills a
 * commit at each of its named steps; this kills it from outside at instants spread over the
 * whole save-and-commit window, so the places between the steps are hit too: inside the
 * engine's save into memory, the state's split, a chunk's write or fsync, a rename.
 *
 * Per mode, turn 1 is committed in this process; an uncrashed child commits turn 2 once (its
 * reply and committed tokens are "the new turn"; the times its marks arrive measure the
 * window). Then each kill runs turn 2 again in a child on a copy of the turn-1 root. The child
 * (fixtures/chunked-turn-child.ts with `trace`) prints "save" right before the engine saves and
 * each commit step as it reaches it; the parent SIGKILLs it a random delay after an anchor —
 * "save" for half the kills, the start of the install (the tail's temp written) for the other
 * half, so both halves of the window are covered however much its length varies from run to
 * run — the delays stratified over 0..1.2 × the anchor's part of the window, from a seeded PRNG
 * (KVKEEP_CRASH_SEED, printed in every failure, draws the same delays again; KVKEEP_CHUNK_CRASH_KILLS
 * sets the kills per mode, 6 by default).
 * The steps the child printed say how far its commit got, so each kill has an exact
 * expectation: the previous turn before the install's decisive rename, the new one after it,
 * either while that rename may or may not have landed. After each kill:
 *   - `kvkeep verify` (the built CLI) on the root as the crash left it: nothing damaged;
 *   - a fresh store's recovery leaves no temp file anywhere below the root;
 *   - the tokens a fresh store loads for the conversation are exactly the previous turn's or
 *     the new turn's, as expected (auto mode: the new key holds the new turn, or nothing it
 *     trusts and the previous key still holds the previous turn);
 *   - the conversation's next turn resumes from that state whole (a hit, every token reused)
 *     and commits;
 *   - once the GC margin has passed, a sweep leaves exactly the chunks some manifest names
 *     (the crashed commit's unreferenced chunks are collected).
 * Where the kills landed (the last step each child printed) is printed per mode.
 */
import { cp } from "node:fs/promises";
import path from "node:path";
import type { LlamaModel } from "node-llama-cpp";
import { beforeAll, describe, expect, it } from "vitest";
import { type CacheMessage, openKvCacheStore } from "../../src/index.js";
import { loadNativeFs } from "../../src/native/index.js";
import { referencedChunks } from "../../src/retention/chunk-gc.js";
import { json, kvkeep } from "../cli/helpers.js";
import { seededBytes } from "../native/helpers.js";
import { type ChildRun, runChild } from "../helpers/child.js";
import { ageChunkFiles, chunkKeysOnDisk, tempFilesUnder } from "../helpers/chunk-root.js";
import { cachePathAfter, chunkedTurn, tinyModelAndChild } from "../helpers/chunked-turn.js";
import { committedEntry, committedTokens, loadedTokens, manifestFingerprint } from "../helpers/committed-state.js";
import { tempDir } from "../helpers/temp-root.js";

const SIZE = { maxTokens: 16, contextSize: 2048 };
const KILLS = Number(process.env.KVKEEP_CHUNK_CRASH_KILLS ?? 6);
const SEED = Number(process.env.KVKEEP_CRASH_SEED ?? Math.floor(Math.random() * 2 ** 31));
/** Delays span this many times the anchor's part of the window: some land past it. */
const SPAN = 1.2;

let model: LlamaModel;
let modelPath: string;
let child: string;
beforeAll(async () => ({ model, modelPath, child } = await tinyModelAndChild("test/engine/fixtures/chunked-turn-child.ts")));

const system: CacheMessage = { role: "system", content: "You answer in one short plain sentence and never repeat the question back. ".repeat(9) };
const u1: CacheMessage = { role: "user", content: "How does a notebook help someone remember what they read last week?" };
/** Long enough that turn 2 completes at least one new chunk: its commit writes chunks. */
const u2: CacheMessage = { role: "user", content: `Now say why a crash should never tear a saved page. ${"Think about the ink, the binding and the shelf. ".repeat(9)}` };
const u3: CacheMessage = { role: "user", content: "And in one line, what survives a power cut?" };

type Mode = "named" | "auto";
type Outcome = "previous" | "new";

/** The marks a kill is timed from: the engine's save begins; the install begins (the tail's temp is written). */
const ANCHORS = ["save", "step chunked:after-tail-temp"] as const;

/** A turn-1 root and what turn 2 commits on it undisturbed. */
interface Base {
  root: string;
  fingerprint: string | null;
  h2: CacheMessage[];
  reply2: string;
  previous: number[];
  next: number[];
  /** Where turn 1's state is, relative to a root (auto mode: the key turn 2 starts from, removed once turn 2 is in). */
  previousPath: string;
  /** Where turn 2's state goes, relative to a root (named mode: the same cache). */
  nextPath: string;
  /** From each anchor to the next mark (the last: to "done"), in the uncrashed run, in ms. */
  parts: [number, number];
}

/** A traced child for turn 2 on a root of its own, started ahead: it loads the model while the root is made, and runs on go(). */
interface Pending {
  root: string;
  run: ChildRun;
  go(): void;
}

function startChild(h2: CacheMessage[], kvCache: string | true): Pending {
  const root = tempDir();
  const run = runChild(child, [modelPath, root, JSON.stringify({ history: h2, kvCache, ...SIZE, trace: true, onSignal: true })]);
  return { root, run, go: () => void run.waitForLine((l) => l === "ready", 60_000).then(() => run.child.kill("SIGUSR2")) };
}

async function makeBase(kvCache: string | true): Promise<Base> {
  const root = tempDir();
  const store = openKvCacheStore({ root });
  try {
    const h1 = [system, u1];
    const t1 = await chunkedTurn(model, store, h1, kvCache, SIZE);
    expect(t1.stats).toMatchObject({ layout: "chunked", committed: true });
    const h2 = [...h1, { role: "assistant", content: t1.text }, u2];
    const previousPath = path.relative(root, cachePathAfter(model, store, kvCache, [...h1, { role: "assistant", content: t1.text }]));

    // Turn 2 undisturbed, in a child like the ones killed: its reply names auto mode's new key.
    const calibration = startChild(h2, kvCache);
    await cp(root, calibration.root, { recursive: true });
    calibration.go();
    const seen: number[] = [];
    for (const mark of [...ANCHORS, "done"]) {
      await calibration.run.waitForLine((l) => l === mark, 60_000);
      seen.push(performance.now());
    }
    expect(await calibration.run.exited, calibration.run.stderr()).toBe(0);
    const result = JSON.parse(calibration.run.stdout().trim().split("\n").pop()!) as { text: string; stats: { committed: boolean; layout: string } };
    expect(result.stats).toMatchObject({ committed: true, layout: "chunked" });
    const nextPath = path.relative(root, cachePathAfter(model, store, kvCache, [...h2, { role: "assistant", content: result.text }]));
    const next = await committedTokens(path.join(calibration.root, nextPath), calibration.root);
    const previous = await committedTokens(path.join(root, previousPath), root);
    // The commit writes at least one chunk (so chunk writes are inside the window).
    const { chunkTokens } = (await committedEntry(path.join(calibration.root, nextPath))).chunks!;
    expect(Math.floor(next.length / chunkTokens)).toBeGreaterThan(Math.floor(previous.length / chunkTokens));
    return {
      root,
      fingerprint: await manifestFingerprint(path.join(root, previousPath)),
      h2,
      reply2: result.text,
      previous,
      next,
      previousPath,
      nextPath,
      parts: [seen[1]! - seen[0]!, seen[2]! - seen[1]!],
    };
  } finally {
    await store.close();
  }
}

/**
 * What a kill may have left, from the commit steps the child printed after "save" (in order)
 * and whether it finished. Named mode replaces the cache: the new state is in from the
 * rename that follows "install:after-pending-manifest" (printed next as "install:after-rename").
 * Auto mode installs a fresh target: its file is renamed in before "install:after-rename", but
 * it counts only once its manifest is renamed in too (printed next as "atomic-write:after-rename").
 */
function expectedOutcomes(mode: Mode, steps: readonly string[], finished: boolean): Set<Outcome> {
  const [from, landed] = mode === "named" ? ["install:after-pending-manifest", "install:after-rename"] : ["install:after-rename", "atomic-write:after-rename"];
  const reached = steps.indexOf(from);
  if (finished || (reached >= 0 && steps.indexOf(landed, reached) >= 0)) return new Set(["new"]);
  return new Set(reached >= 0 ? ["previous", "new"] : ["previous"]);
}

/** Kill i's anchor (alternating) and delay: one per stratum of 0..SPAN × its anchor's part, at a random place in it. */
function killPlan(kills: number, parts: [number, number], seed: number): Array<{ anchor: number; delay: number }> {
  const random = seededBytes(4 * kills, seed);
  return Array.from({ length: kills }, (_, i) => {
    const anchor = i % 2;
    const strata = Math.ceil((kills - anchor) / 2);
    const stratum = Math.floor(i / 2);
    return { anchor, delay: ((stratum + random.readUInt32LE(4 * i) / 2 ** 32) / strata) * SPAN * parts[anchor]! };
  });
}

const sameTokens = (a: readonly number[] | null, b: readonly number[]): boolean => a !== null && a.length === b.length && a.every((t, i) => t === b[i]);

describe.each([
  ["named", "crashy"],
  ["auto", true],
] as Array<[Mode, string | true]>)("a chunked %s commit", (mode, kvCache) => {
  it(`SIGKILLed at ${KILLS} random instants of its save and commit leaves the previous turn or the new one, whole; verify finds nothing damaged, recovery leaves no temps, the next turn resumes every token, and GC collects the chunks the crash left unreferenced`, async () => {
    const base = await makeBase(kvCache);
    const seed = SEED + (mode === "named" ? 0 : 1);
    const plan = killPlan(KILLS, base.parts, seed);
    const landed = new Map<string, number>();
    let pending: Pending | null = startChild(base.h2, kvCache);
    try {
      for (const [kill, { anchor, delay }] of plan.entries()) {
        const current: Pending = pending!;
        await cp(base.root, current.root, { recursive: true });
        current.go();
        await current.run.waitForLine((l) => l === ANCHORS[anchor], 60_000);
        await new Promise((r) => setTimeout(r, delay));
        current.run.child.kill("SIGKILL");
        const exit = await current.run.exited;
        // The next kill's child loads its model while this one is checked.
        pending = kill + 1 < KILLS ? startChild(base.h2, kvCache) : null;

        const lines = current.run.stdout().split("\n");
        const steps = lines.slice(lines.indexOf("save")).filter((l) => l.startsWith("step ")).map((l) => l.slice(5));
        const finished = lines.includes("done");
        const last = finished ? "done" : (steps.at(-1) ?? "(none yet: the engine's save, the split)");
        const where = `KVKEEP_CRASH_SEED=${SEED} (${mode}), kill ${kill}: ${delay.toFixed(1)} ms after "${ANCHORS[anchor]}", last step ${last}`;
        // Killed; or, a delay past the window, done and killed while closing, or exited.
        expect(finished ? [0, "SIGKILL"] : ["SIGKILL"], `${where}: ${current.run.stderr()}`).toContain(exit);
        const outcome = await checkKilled(mode, kvCache, base, current.root, where);
        expect([...expectedOutcomes(mode, steps, finished)], `${where}: it left the ${outcome} turn`).toContain(outcome);
        landed.set(`${last} → ${outcome}`, (landed.get(`${last} → ${outcome}`) ?? 0) + 1);
      }
    } finally {
      pending?.run.child.kill("SIGKILL");
    }
    console.log(
      `${mode}: ${KILLS} kills (KVKEEP_CRASH_SEED=${SEED}; uncrashed: ${base.parts[0].toFixed(1)} ms from the save to the install, ${base.parts[1].toFixed(1)} ms to done); the last step each child printed → what it left:\n` +
        [...landed].map(([l, n]) => `  ${n} × ${l}`).join("\n"),
    );
  }, 600_000);
});

/** Everything checked after a kill; resolves which turn the root kept. */
async function checkKilled(mode: Mode, kvCache: string | true, base: Base, root: string, where: string): Promise<Outcome> {
  // The root exactly as the crash left it: nothing damaged (a file without its manifest is "foreign", not damage).
  const verify = await kvkeep(["verify", "--root", root, "--json"]);
  expect(verify.code, `${where}: ${verify.stdout} ${verify.stderr}`).toBe(0);
  for (const r of json<{ results: Array<{ status: string; cachePath: string }> }>(verify).results) expect(["ok", "foreign"], `${where}: ${r.cachePath}`).toContain(r.status);

  const store = openKvCacheStore({ root });
  try {
    await store.ready;
    expect(tempFilesUnder(root), where).toEqual([]);

    const nextPath = path.join(root, base.nextPath);
    let outcome: Outcome;
    if (mode === "named") {
      const tokens = await loadedTokens(store, nextPath, base.fingerprint);
      outcome = sameTokens(tokens, base.next) ? "new" : "previous";
      expect(sameTokens(tokens, outcome === "new" ? base.next : base.previous), `${where}: ${tokens?.length ?? "no"} tokens, neither turn's`).toBe(true);
    } else {
      const target = await loadedTokens(store, nextPath, base.fingerprint);
      const source = await loadedTokens(store, path.join(root, base.previousPath), base.fingerprint);
      outcome = target === null ? "previous" : "new";
      if (target !== null) expect(sameTokens(target, base.next), `${where}: the new key holds ${target.length} tokens, not the new turn's`).toBe(true);
      // The previous key goes only once the new one is in, and never changes meanwhile.
      if (target === null || source !== null) expect(sameTokens(source, base.previous), `${where}: the previous key holds ${source?.length ?? "no"} tokens`).toBe(true);
    }

    // The conversation goes on from that state, every token of it reused.
    const resumed = outcome === "new" ? base.next : base.previous;
    const t3 = await chunkedTurn(model, store, [...base.h2, { role: "assistant", content: base.reply2 }, u3], kvCache, SIZE);
    expect(t3.stats, where).toMatchObject({ layout: "chunked", hit: true, committed: true, reusedTokens: resumed.length });

    // Chunks the crashed commit wrote but no manifest names go to the next GC past its margin.
    await ageChunkFiles(root);
    await store.sweep();
    expect(await chunkKeysOnDisk(root), where).toEqual(await referencedChunks(root, loadNativeFs()));
    expect(tempFilesUnder(root), where).toEqual([]);
    return outcome;
  } finally {
    await store.close();
  }
}
