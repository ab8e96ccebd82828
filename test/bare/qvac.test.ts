/**
 * kvkeep/qvac driving the real `@qvac/llm-llamacpp` 0.53.0 addon under the real `bare`
 * binary, on generated GGUF models. "chatty" is the tiny fixture with `eogBias: 1`, so its
 * greedy replies end on their own (3–80 tokens) and QVAC's commit rule lets turns commit.
 * Each Bare process is a fresh process: a hit in a second process proves the resume came
 * from disk.
 */
import { readdirSync, readFileSync, statSync, truncateSync } from "node:fs";
import path from "node:path";
import { beforeAll, describe, expect, it } from "vitest";
import { COMPLETION_STATS_FIELDS } from "../../src/engines/shared/stats.js";
import { ensureModel } from "../fixtures/gguf/models.js";
import { tempDir } from "../helpers/temp-root.js";
import { bareRuntimes, onBare, type BareRunner } from "./helpers.js";

type Message = { role: string; content: string };
interface TurnLine {
  ok: boolean;
  text?: string;
  code?: string | null;
  stats?: { hit: boolean; promptTokens: number; reusedTokens: number; evaluatedTokens: number; committed: boolean; loadMs: number; source: string };
  log?: string;
}

const S: Message = { role: "system", content: "Be brief." };
const U1: Message = { role: "user", content: "Hello there" };
const U2: Message = { role: "user", content: "Tell me a story" };
const U3: Message = { role: "user", content: "What is the weather?" };
const assistant = (content: string): Message => ({ role: "assistant", content });

let chatty = "";
let foreign = "";

interface Turn {
  history: Message[];
  kvCache: string | boolean;
  scope?: string;
  abortAfterPieces?: number;
  generationParams?: Record<string, unknown>;
}

/** One Bare process running `turns` in order; resolves to its per-turn lines. */
async function runTurns(
  runner: BareRunner,
  root: string,
  turns: Turn[],
  options: { model?: string; logWarnings?: boolean; addonStats?: boolean } = {},
): Promise<TurnLine[]> {
  const result = await runner.runBare("qvac-worker.mjs", {
    model: options.model ?? chatty,
    root,
    modelId: "tiny",
    logWarnings: options.logWarnings ?? false,
    addonStats: options.addonStats ?? true,
    turns,
  });
  if (result.status !== 0) throw new Error(`bare exited ${result.status}: ${result.stderr}`);
  return result.lines as unknown as TurnLine[];
}

const turnsOnly = (lines: TurnLine[]): TurnLine[] => lines.filter((l) => l.log === undefined);

function manifest(root: string, key: string): { current: { messageCount: number; tokenCount: number | null }; fingerprint: string } {
  const dir = path.join(root, key, "tiny");
  const file = readdirSync(dir).find((f) => f.endsWith(".meta.json"))!;
  return JSON.parse(readFileSync(path.join(dir, file), "utf8"));
}

function cacheFile(root: string, key: string): string {
  const dir = path.join(root, key, "tiny");
  return path.join(dir, readdirSync(dir).find((f) => f.endsWith(".bin"))!);
}

/** Every file below `root` that is not a committed cache, manifest, lock or the index log. */
function strayFiles(root: string): string[] {
  const out: string[] = [];
  const walk = (dir: string): void => {
    for (const e of readdirSync(dir, { withFileTypes: true })) {
      const p = path.join(dir, e.name);
      if (e.isDirectory()) walk(p);
      else if (!/\.(bin|meta\.json|lock|log)$/.test(e.name) && path.relative(root, p) !== path.join(".kvkeep", "root.json")) out.push(path.relative(root, p));
    }
  };
  walk(root);
  return out;
}

describe.each(bareRuntimes())("kvkeep/qvac on Bare $version with @qvac/llm-llamacpp 0.53.0", (runtime) => {
  const runner = onBare(runtime);
  const bare = (root: string, turns: Turn[], options?: { model?: string; logWarnings?: boolean; addonStats?: boolean }): Promise<TurnLine[]> =>
    runTurns(runner, root, turns, options);

  beforeAll(async () => {
    chatty = await ensureModel("tiny", undefined, { eogBias: 1 });
    foreign = await ensureModel("tiny", undefined, { eogBias: 1, seed: 2 });
  });

  it("cold prime: primes the system prompt, replies as an uncached run, and commits history + reply", async () => {
    const root = tempDir();
    const [cached, uncached] = turnsOnly(await bare(root, [
      { history: [S, U1], kvCache: "chat" },
      { history: [S, U1], kvCache: false },
    ]));
    expect(cached!.ok).toBe(true);
    expect(cached!.text!.length).toBeGreaterThan(0);
    expect(cached!.text).toBe(uncached!.text);
    expect(cached!.stats).toMatchObject({ hit: false, reusedTokens: 0, committed: true });
    expect(cached!.stats!.promptTokens).toBe(uncached!.stats!.promptTokens);
    const m = manifest(root, "chat");
    expect(m.current.messageCount).toBe(3);
    expect(m.current.tokenCount).toBeGreaterThan(cached!.stats!.promptTokens);
    expect(strayFiles(root)).toEqual([]);
  });

  for (const mode of ["named", "auto"] as const) {
    it(`${mode} mode: a second Bare process resumes from disk and replies as one process doing both turns`, async () => {
      const kvCache = mode === "named" ? "chat" : true;
      const split = tempDir();
      const [first] = turnsOnly(await bare(split, [{ history: [S, U1], kvCache }]));
      const key = mode === "named" ? "chat" : readdirSync(split).find((d) => d.startsWith("auto-"))!;
      const committedTokens = manifest(split, key).current.tokenCount;
      const history2 = [S, U1, assistant(first!.text!), U2];
      const [second] = turnsOnly(await bare(split, [{ history: history2, kvCache }]));

      const single = tempDir();
      const reference = turnsOnly(await bare(single, [
        { history: [S, U1], kvCache },
        { history: history2, kvCache },
      ]));
      expect(reference[0]!.text).toBe(first!.text);
      expect(second!.ok).toBe(true);
      expect(second!.text).toBe(reference[1]!.text);
      // The second process evaluated only the new message: the rest came from the cache.
      expect(second!.stats!.hit).toBe(true);
      expect(second!.stats!.reusedTokens).toBeGreaterThan(first!.stats!.promptTokens);
      expect(second!.stats!.reusedTokens + second!.stats!.evaluatedTokens).toBe(second!.stats!.promptTokens);
      const counts = ({ hit, promptTokens, reusedTokens, evaluatedTokens, committed }: NonNullable<TurnLine["stats"]>) => ({
        hit,
        promptTokens,
        reusedTokens,
        evaluatedTokens,
        committed,
      });
      expect(counts(second!.stats!)).toEqual(counts(reference[1]!.stats!));
      // The tokens reused are those the first turn committed.
      expect(second!.stats!.reusedTokens).toBe(committedTokens);
      expect(strayFiles(split)).toEqual([]);
    });
  }

  it("without the addon's opts.stats, a resumed conversation still reports a hit from its own cache, with every stats field", async () => {
    // kvkeep knows it resumed the cache: the hit does not depend on the addon's token counts,
    // which it reports only with opts: { stats: true } (the counts are then 0).
    const root = tempDir();
    const [first] = turnsOnly(await bare(root, [{ history: [S, U1], kvCache: "chat" }], { addonStats: false }));
    expect(first!.ok).toBe(true);
    expect(first!.stats).toMatchObject({ hit: false, source: "none", committed: true });
    const history2 = [S, U1, assistant(first!.text!), U2];
    const [second] = turnsOnly(await bare(root, [{ history: history2, kvCache: "chat" }], { addonStats: false }));
    expect(second!.ok).toBe(true);
    expect(second!.stats).toMatchObject({ hit: true, source: "own", sourceKey: "chat", committed: true, promptTokens: 0, reusedTokens: 0 });
    for (const line of [first!, second!]) expect(Object.keys(line.stats!).sort()).toEqual(Object.keys(COMPLETION_STATS_FIELDS).sort());
    expect(strayFiles(root)).toEqual([]);
  });

  it("stale count: a history that does not extend the cached conversation runs whole, never appended to it", async () => {
    const root = tempDir();
    const [first] = turnsOnly(await bare(root, [{ history: [S, U1], kvCache: "chat" }]));
    expect(manifest(root, "chat").current.messageCount).toBe(3);
    // [S, U3] has 2 messages; the cache claims 3: its count cannot place this history.
    const [stale, uncached] = turnsOnly(await bare(root, [
      { history: [S, U3], kvCache: "chat" },
      { history: [S, U3], kvCache: false },
    ]));
    expect(first!.ok && stale!.ok).toBe(true);
    expect(stale!.text).toBe(uncached!.text);
    expect(stale!.stats).toMatchObject({ hit: false, reusedTokens: 0, committed: true });
    expect(manifest(root, "chat").current.messageCount).toBe(3);
    // The stale cache was replaced by this conversation's: the next turn resumes it.
    const history = [S, U3, assistant(stale!.text!), U2];
    const [next] = turnsOnly(await bare(root, [{ history, kvCache: "chat" }]));
    const [reference] = turnsOnly(await bare(tempDir(), [
      { history: [S, U3], kvCache: "chat" },
      { history, kvCache: "chat" },
    ])).slice(1);
    expect(next!.stats!.hit).toBe(true);
    expect(next!.text).toBe(reference!.text);
  });

  it("a truncated cache file never reaches the addon (it would abort the process): re-primed instead", async () => {
    const root = tempDir();
    const [first] = turnsOnly(await bare(root, [{ history: [S, U1], kvCache: "chat" }]));
    const bin = cacheFile(root, "chat");
    truncateSync(bin, Math.floor(statSync(bin).size / 2));
    const history = [S, U1, assistant(first!.text!), U2];
    const lines = await bare(root, [{ history, kvCache: "chat" }], { logWarnings: true });
    const [turn] = turnsOnly(lines);
    expect(turn!.ok).toBe(true);
    expect(turn!.stats).toMatchObject({ hit: false, reusedTokens: 0, committed: true, refused: { reason: "corrupt" } });
    expect(lines.some((l) => l.log?.includes("cache not trusted"))).toBe(true);
    // As a fresh cache of the same history would: primed system prompt + the rest of the history.
    const [fresh] = turnsOnly(await bare(tempDir(), [{ history, kvCache: "chat" }]));
    expect(turn!.text).toBe(fresh!.text);
  });

  it("a cache from another model of the same shape never reaches the addon: re-primed for this model", async () => {
    const root = tempDir();
    await bare(root, [{ history: [S, U1], kvCache: "chat" }]);
    const fingerprintA = manifest(root, "chat").fingerprint;
    const history = [S, U1, assistant("Hi."), U2];
    const lines = await bare(root, [{ history, kvCache: "chat" }], { model: foreign, logWarnings: true });
    const [turn] = turnsOnly(lines);
    expect(turn!.ok).toBe(true);
    expect(turn!.stats!.hit).toBe(false);
    expect(turn!.stats).toMatchObject({ refused: { reason: "foreign" } });
    expect(lines.some((l) => l.log?.includes("cache not trusted"))).toBe(true);
    expect(manifest(root, "chat").fingerprint).not.toBe(fingerprintA);
    const [fresh] = turnsOnly(await bare(tempDir(), [{ history, kvCache: "chat" }], { model: foreign }));
    expect(turn!.text).toBe(fresh!.text);
  });

  it("abort: cancels the addon's job, rejects with ABORTED, keeps the committed cache and leaves no temp file", async () => {
    const root = tempDir();
    const [first] = turnsOnly(await bare(root, [{ history: [S, U1], kvCache: "chat" }]));
    const bin = cacheFile(root, "chat");
    const before = { bytes: readFileSync(bin), manifest: readFileSync(bin.replace(/\.bin$/, ".meta.json"), "utf8") };
    const history = [S, U1, assistant(first!.text!), U2];
    const [aborted] = turnsOnly(await bare(root, [
      { history, kvCache: "chat", abortAfterPieces: 1, generationParams: { predict: 2000 } },
    ]));
    expect(aborted).toMatchObject({ ok: false, code: "ABORTED" });
    expect(readFileSync(bin)).toEqual(before.bytes);
    expect(readFileSync(bin.replace(/\.bin$/, ".meta.json"), "utf8")).toBe(before.manifest);
    expect(strayFiles(root)).toEqual([]);
    const [after] = turnsOnly(await bare(root, [{ history, kvCache: "chat" }]));
    // The next turn resumes the committed state as if the aborted turn never ran.
    const [reference] = turnsOnly(await bare(tempDir(), [
      { history: [S, U1], kvCache: "chat" },
      { history, kvCache: "chat" },
    ])).slice(1);
    expect(after!.stats!.hit).toBe(true);
    expect(after!.text).toBe(reference!.text);
  });

  it("scopes: a conversation of one scope resumes in a later process of that scope, never in another scope with the same key", async () => {
    const root = tempDir();
    const [first] = turnsOnly(await bare(root, [{ history: [S, U1], kvCache: "chat", scope: "user-a" }]));
    const history2 = [S, U1, assistant(first!.text!), U2];
    const [other, own] = turnsOnly(await bare(root, [
      { history: history2, kvCache: "chat", scope: "user-b" },
      { history: history2, kvCache: "chat", scope: "user-a" },
    ]));
    expect(other!.ok && own!.ok).toBe(true);
    expect(other!.stats).toMatchObject({ hit: false, reusedTokens: 0, committed: true });
    expect(own!.stats!.hit).toBe(true);
    expect(own!.stats!.reusedTokens).toBeGreaterThan(first!.stats!.promptTokens);
    // Two caches under .scopes/, none in the shared space.
    expect(readdirSync(root).filter((d) => !d.startsWith("."))).toEqual([]);
    expect(readdirSync(path.join(root, ".scopes"))).toHaveLength(2);
    expect(strayFiles(root)).toEqual([]);
  });

  it("two Bare processes on one key take turns: exactly one resumes the conversation, the others see its commit", async () => {
    // The conversation is committed at 3 messages; both processes then send its 4-message
    // continuation three times. The first turn to get the cache resumes it (a hit, the
    // incremental reply) and commits 5 messages; every later turn finds a count its history
    // cannot extend and runs whole (no hit, the uncached reply). Two turns overlapping would
    // both resume. The paths are told apart by their stats, not by their texts: whether the
    // two replies differ is the engine's numerics, not kvkeep's behaviour.
    const root = tempDir();
    const [a1] = turnsOnly(await bare(root, [{ history: [S, U1], kvCache: "shared" }]));
    const history2 = [S, U1, assistant(a1!.text!), U2];
    const [, incremental, uncached] = turnsOnly(await bare(tempDir(), [
      { history: [S, U1], kvCache: "chat" },
      { history: history2, kvCache: "chat" },
      { history: history2, kvCache: false },
    ]));
    expect(incremental!.stats!.hit && !uncached!.stats!.hit).toBe(true);
    const rounds: Turn[] = [0, 1, 2].map(() => ({ history: history2, kvCache: "shared" }));
    const [p, q] = await Promise.all([bare(root, rounds), bare(root, rounds)]);
    const replies = [...turnsOnly(p), ...turnsOnly(q)];
    expect(replies).toHaveLength(6);
    expect(replies.every((r) => r.ok)).toBe(true);
    const resumed = replies.filter((r) => r.stats!.hit);
    const whole = replies.filter((r) => !r.stats!.hit);
    expect(resumed).toHaveLength(1);
    expect(resumed[0]!.stats!.reusedTokens).toBe(incremental!.stats!.reusedTokens);
    expect(resumed[0]!.text).toBe(incremental!.text);
    expect(whole).toHaveLength(5);
    for (const r of whole) {
      expect(r.stats!.reusedTokens).toBe(0);
      expect(r.text).toBe(uncached!.text);
    }
    expect(manifest(root, "shared").current.messageCount).toBe(5);
    expect(strayFiles(root)).toEqual([]);
  });
});
