/**
 * A chunked session through the session API, with states written from the layout table
 * (test/chunks/synthetic-state.ts) into the turn's in-memory file — real files, a real
 * store, no engine: what a commit stores, what loadState hands back, and the fallbacks.
 * (The real engine: test/engine/chunked-turns.test.ts.)
 */
import { existsSync, readdirSync, readFileSync, writeFileSync } from "node:fs";
import path from "node:path";
import { describe, expect, it } from "vitest";
import { cutSeqState, parseSeqState } from "../../src/chunks/state-format.js";
import { type KvCacheSession, type KvCacheStore, openKvCacheStore, type TurnHandle } from "../../src/index.js";
import { buildState, F16_LAYERS } from "../chunks/synthetic-state.js";
import { committedEntry, committedState } from "../helpers/committed-state.js";
import { tempDir } from "../helpers/temp-root.js";

const skip = process.env.KVKEEP_NO_NATIVE === "1" || process.platform !== "linux";
const CONFIG = "0123456789abcdef";
const CHUNKS = { attentionRotation: "default", sequences: 1, chunkTokens: 16 };

function state(tokens: number, salt?: number, saltFrom?: number): Buffer {
  return buildState({ tokenCount: tokens, layers: F16_LAYERS, vTrans: false, ...(salt !== undefined ? { salt, saltFrom: saltFrom ?? 0 } : {}) });
}

function chunkFileCount(root: string): number {
  let n = 0;
  const walk = (dir: string): void => {
    if (!existsSync(dir)) return;
    for (const e of readdirSync(dir, { withFileTypes: true })) {
      if (e.isDirectory()) walk(path.join(dir, e.name));
      else if (e.name.endsWith(".kvkc")) n++;
    }
  };
  walk(path.join(root, ".kvkeep", "chunks"));
  return n;
}

/** One named turn whose engine "saves" `bytes`: primes with `prime` when the cache is new. */
async function commitTurnOf(session: KvCacheSession, key: string, bytes: Buffer, prime: Buffer = state(20)): Promise<TurnHandle> {
  const turn = await session.beginTurn({ kind: "custom", customKey: key, configHash: CONFIG, primeIfMissing: async (p) => writeFileSync(p, prime) });
  writeFileSync(turn.savePath, bytes);
  const outcome = await session.commitTurn(turn, { kind: "static", messageCount: 2 });
  expect(outcome.committed).toBe(true);
  return turn;
}

describe.skipIf(skip)("a chunked session (synthetic states, real files)", () => {
  const open = (): { store: KvCacheStore; session: KvCacheSession; root: string } => {
    const root = tempDir();
    const store = openKvCacheStore({ root });
    return { store, root, session: store.createSession("m", { fingerprint: "fp", chunks: CHUNKS }) };
  };

  it("hands the engine in-memory paths, stores full chunks plus a tail, and loadState gives back the state byte for byte", async () => {
    const { store, session, root } = open();
    expect(session.layout).toBe("chunked");
    expect(store.createSession("m").layout).toBe("whole");
    const saved = state(70);
    const turn = await commitTurnOf(session, "k", saved);
    expect(turn.savePath).toMatch(/^\/proc\/self\/fd\/\d+$/);
    const cachePath = session.customCachePath("k", CONFIG);
    const entry = await committedEntry(cachePath);
    expect(entry.chunks).toMatchObject({ chunkTokens: 16, tokens: 70 });
    expect(entry.chunks!.ids).toHaveLength(4);
    // The prime's state (20 tokens) made chunk 0, which the turn's state shares: 4 files in all.
    expect(chunkFileCount(root)).toBe(4);
    expect((await committedState(cachePath, root)).equals(saved)).toBe(true);

    const next = await session.beginTurn({ kind: "custom", customKey: "k", configHash: CONFIG, primeIfMissing: async () => {} });
    expect(next.layout).toBe("chunked");
    const whole = await session.loadState(next, async (p, tokens) => ({ bytes: readFileSync(p), tokens }));
    expect(whole.bytes.equals(saved)).toBe(true);
    expect(whole.tokens).toBe(70);
    // With the prompt's tokens: only what they share (here the first 40 tokens, then a difference).
    const prompt = [...parseSeqState(saved).tokens.slice(0, 40), -5, -6];
    const cut = await session.loadState(next, async (p, tokens) => ({ bytes: readFileSync(p), tokens }), { tokens: prompt });
    expect(cut.tokens).toBe(40);
    expect(cut.bytes.equals(cutSeqState(saved, 40))).toBe(true);
    await session.rollback(next);
    await store.close();
  });

  it("a second commit writes only the chunks its new tokens complete; another conversation sharing the opening shares its chunks", async () => {
    const { store, session, root } = open();
    await commitTurnOf(session, "a", state(50));
    const afterFirst = chunkFileCount(root);
    await commitTurnOf(session, "a", state(100));
    expect(chunkFileCount(root) - afterFirst).toBe(Math.floor(100 / 16) - Math.floor(50 / 16));
    const before = chunkFileCount(root);
    // Same first 48 tokens (3 chunks), then its own: 3 chunks shared, the rest new.
    await commitTurnOf(session, "b", state(100, 7, 48));
    expect(chunkFileCount(root) - before).toBe(Math.floor(100 / 16) - 3);
    await store.close();
  });

  it("a state kvkeep cannot split is committed whole and still loads; an empty save is SAVE_MISSING", async () => {
    const { store, session } = open();
    const notAState = Buffer.from("not a llama.cpp state at all, but the engine's bytes all the same");
    await commitTurnOf(session, "odd", notAState);
    const cachePath = session.customCachePath("odd", CONFIG);
    expect((await committedEntry(cachePath)).chunks).toBeUndefined();
    const turn = await session.beginTurn({ kind: "custom", customKey: "odd", configHash: CONFIG, primeIfMissing: async () => {} });
    expect(turn.layout).toBe("whole");
    expect(await session.loadState(turn, async (p) => p)).toBe(cachePath);
    const outcome = await session.commitTurn(turn, { kind: "static", messageCount: 3 }); // nothing saved
    expect(outcome).toMatchObject({ committed: false, reason: "save-missing" });
    await store.close();
  });

  it("refuses chunking options that cannot be right", () => {
    const store = openKvCacheStore({ root: tempDir() });
    expect(() => store.createSession("m", { chunks: { attentionRotation: "default", sequences: 0 } })).toThrow(expect.objectContaining({ code: "INVALID_ARGUMENT" }));
    expect(() => store.createSession("m", { chunks: { attentionRotation: "default", sequences: 1, chunkTokens: 0 } })).toThrow(expect.objectContaining({ code: "INVALID_ARGUMENT" }));
    void store.close();
  });
});
