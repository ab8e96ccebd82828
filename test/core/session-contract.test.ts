/**
 * The seed contract's behaviours 1–8 (DESIGN.md §1), through the seed's own entry points:
 * `createKvCacheSession` / `deleteKvCacheState` / `__kvCacheSessionTestHooks` on the default
 * store, rooted in a fresh temp dir per test via KVKEEP_DIR. Real files, fake engine.
 */
import { existsSync, promises as fs } from "node:fs";
import path from "node:path";
import { beforeEach, describe, expect, it } from "vitest";
import {
  __kvCacheSessionTestHooks as hooks,
  createKvCacheSession,
  deleteKvCacheState,
  generateConfigHash,
  getCurrentCacheInfo,
  isKvKeepError,
  type CacheMessage,
} from "../../src/index.js";
import { countingPrime, customTurn, listTree, writeState } from "../helpers/fake-engine.js";
import { tempDir } from "../helpers/temp-root.js";

let root: string;
const MODEL = "test-model";
const configHash = generateConfigHash("you are a helpful assistant.", []);

beforeEach(() => {
  root = tempDir();
  process.env.KVKEEP_DIR = root;
  hooks.resetForTest();
});

describe("1. priming", () => {
  it("primes on the first turn of a key only, and later turns see the count the previous commit recorded", async () => {
    const session = createKvCacheSession(MODEL);
    const prime = countingPrime();
    const first = await session.beginTurn({ kind: "custom", customKey: "session-a", configHash, primeIfMissing: prime });
    expect(prime.calls).toHaveLength(1);
    expect(first.savedCount).toBe(0);
    expect(first.primed).toBe(true);
    expect(hooks.hasInitializedKey(MODEL, configHash, "session-a")).toBe(true);
    await writeState(first.savePath);
    await session.commitTurn(first, { kind: "static", messageCount: 3 });

    const second = await session.beginTurn({ kind: "custom", customKey: "session-a", configHash, primeIfMissing: prime });
    expect(prime.calls).toHaveLength(1);
    expect(second.primed).toBe(false);
    expect(second.savedCount).toBe(3);
    await session.rollback(second);
  });

  it("hands the engine a primed file at cachePath holding exactly what primeIfMissing wrote", async () => {
    const session = createKvCacheSession(MODEL);
    let written: Buffer | undefined;
    const turn = await session.beginTurn({
      kind: "custom",
      customKey: "s",
      configHash,
      primeIfMissing: async (p) => {
        written = await writeState(p, 777);
      },
    });
    expect(await fs.readFile(turn.cachePath)).toEqual(written);
    expect(turn.cachePath).toBe(path.join(root, "s", MODEL, `${configHash}.bin`));
    await session.rollback(turn);
  });
});

describe("2. prime verification", () => {
  it("fails with 'no cache file was written' when primeIfMissing writes nothing, leaving no init flag and no key directory", async () => {
    const session = createKvCacheSession(MODEL);
    const error = await session
      .beginTurn({ kind: "custom", customKey: "nothing", configHash, primeIfMissing: async () => {} })
      .catch((e: unknown) => e);
    expect(isKvKeepError(error, "NO_CACHE_WRITTEN")).toBe(true);
    expect((error as Error).message).toContain("no cache file was written");
    expect(hooks.hasInitializedKey(MODEL, configHash, "nothing")).toBe(false);
    expect(existsSync(path.join(root, "nothing"))).toBe(false);
  });

  it("removes a zero-byte primed file and fails with 'cache file is empty', leaving no init flag and no key directory", async () => {
    const session = createKvCacheSession(MODEL);
    let primedPath = "";
    const error = await session
      .beginTurn({
        kind: "custom",
        customKey: "empty",
        configHash,
        primeIfMissing: async (p) => {
          primedPath = p;
          await fs.writeFile(p, "");
        },
      })
      .catch((e: unknown) => e);
    expect(isKvKeepError(error, "CACHE_EMPTY")).toBe(true);
    expect((error as Error).message).toContain("cache file is empty");
    expect(existsSync(primedPath)).toBe(false);
    expect(hooks.hasInitializedKey(MODEL, configHash, "empty")).toBe(false);
    expect(existsSync(path.join(root, "empty"))).toBe(false);
  });

  it("propagates a throwing primeIfMissing and leaves nothing behind", async () => {
    const session = createKvCacheSession(MODEL);
    await expect(
      session.beginTurn({
        kind: "custom",
        customKey: "boom",
        configHash,
        primeIfMissing: async (p) => {
          await writeState(p);
          throw new Error("engine crashed");
        },
      }),
    ).rejects.toThrow("engine crashed");
    expect(await listTree(root)).toEqual([]);
  });
});

describe("3. commit", () => {
  it("records the count when the new state is on disk, and a later rollback changes nothing", async () => {
    const session = createKvCacheSession(MODEL);
    const turn = await session.beginTurn({ kind: "custom", customKey: "c", configHash, primeIfMissing: countingPrime() });
    const bytes = await writeState(turn.savePath);
    const outcome = await session.commitTurn(turn, { kind: "static", messageCount: 7 });
    const st = await fs.stat(turn.cachePath, { bigint: true });
    expect(outcome).toEqual({
      committed: true,
      cachePath: turn.cachePath,
      messageCount: 7,
      keptExisting: false,
      file: { size: Number(st.size), ino: st.ino.toString(), mtimeNs: st.mtimeNs.toString() },
    });
    expect(hooks.getSavedCount(turn.cachePath)).toBe(7);
    expect(await fs.readFile(turn.cachePath)).toEqual(bytes);
    expect(existsSync(turn.savePath)).toBe(false);

    await session.rollback(turn);
    expect(hooks.getSavedCount(turn.cachePath)).toBe(7);
    expect(existsSync(turn.cachePath)).toBe(true);
    expect(hooks.hasInitializedKey(MODEL, configHash, "c")).toBe(true);
  });

  it("accepts an engine that writes in place at cachePath instead of savePath", async () => {
    const session = createKvCacheSession(MODEL);
    const turn = await session.beginTurn({ kind: "custom", customKey: "inplace", configHash, primeIfMissing: countingPrime() });
    const bytes = await writeState(turn.cachePath, 3000);
    await session.commitTurn(turn, { kind: "static", messageCount: 5 });
    expect(hooks.getSavedCount(turn.cachePath)).toBe(5);
    const next = await session.beginTurn({ kind: "custom", customKey: "inplace", configHash, primeIfMissing: countingPrime() });
    expect(next.savedCount).toBe(5);
    expect(await fs.readFile(next.cachePath)).toEqual(bytes);
    await session.rollback(next);
  });

  it("rolls the turn back (the seed's clear) and resolves { committed: false, reason: 'save-missing' } when the engine saved nothing", async () => {
    const session = createKvCacheSession(MODEL);
    const turn = await session.beginTurn({ kind: "custom", customKey: "unsaved", configHash, primeIfMissing: countingPrime() });
    hooks.setSavedCountForTest(turn.cachePath, 4);
    const outcome = await session.commitTurn(turn, { kind: "static", messageCount: 9 });
    expect(outcome).toMatchObject({ committed: false, reason: "save-missing", keptCommitted: false });
    expect(outcome.committed === false && outcome.reason !== "not-open" && isKvKeepError(outcome.error, "SAVE_MISSING")).toBe(true);
    expect(hooks.getSavedCount(turn.cachePath)).toBeUndefined();
    expect(hooks.hasInitializedKey(MODEL, configHash, "unsaved")).toBe(false);
    expect(existsSync(turn.cachePath)).toBe(false);
    // The turn is over: rollback and a second commit are no-ops.
    await session.rollback(turn);
    expect(await session.commitTurn(turn, { kind: "static", messageCount: 9 })).toEqual({ committed: false, reason: "not-open" });
  });

  it("rolls back when the cache file was deleted from under the turn", async () => {
    const session = createKvCacheSession(MODEL);
    const turn = await session.beginTurn({ kind: "custom", customKey: "gone", configHash, primeIfMissing: countingPrime() });
    await fs.unlink(turn.cachePath);
    expect(await session.commitTurn(turn, { kind: "static", messageCount: 2 })).toMatchObject({
      committed: false,
      reason: "save-missing",
      error: { code: "SAVE_MISSING" },
    });
    expect(hooks.getSavedCount(turn.cachePath)).toBeUndefined();
  });

  it("rejects a commit result of the wrong kind without ending the turn", async () => {
    const session = createKvCacheSession(MODEL);
    const turn = await session.beginTurn({ kind: "custom", customKey: "k", configHash, primeIfMissing: countingPrime() });
    await expect(
      session.commitTurn(turn, { kind: "autoRename", targetCachePath: turn.cachePath, messageCount: 1 }),
    ).rejects.toMatchObject({ code: "INVALID_ARGUMENT", argument: "kind" });
    await expect(session.commitTurn(turn, { kind: "static", messageCount: -1 })).rejects.toMatchObject({
      argument: "messageCount",
    });
    await writeState(turn.savePath);
    await expect(session.commitTurn(turn, { kind: "static", messageCount: 1 })).resolves.toMatchObject({ committed: true });
  });
});

describe("4. rollback", () => {
  it("clears the file, the saved count and the init flag at once, and prunes the empty key directory", async () => {
    const session = createKvCacheSession(MODEL);
    const turn = await session.beginTurn({ kind: "custom", customKey: "rb", configHash, primeIfMissing: countingPrime() });
    await writeState(turn.savePath);
    hooks.setSavedCountForTest(turn.cachePath, 4);
    await session.rollback(turn);
    expect(existsSync(turn.cachePath)).toBe(false);
    expect(existsSync(turn.savePath)).toBe(false);
    expect(hooks.getSavedCount(turn.cachePath)).toBeUndefined();
    expect(hooks.hasInitializedKey(MODEL, configHash, "rb")).toBe(false);
    expect(await listTree(root)).toEqual([]);
  });

  it("clears the in-memory layers when the file is already gone", async () => {
    const session = createKvCacheSession(MODEL);
    const turn = await session.beginTurn({ kind: "custom", customKey: "missing", configHash, primeIfMissing: countingPrime() });
    hooks.setSavedCountForTest(turn.cachePath, 2);
    await fs.unlink(turn.cachePath);
    await session.rollback(turn);
    expect(hooks.getSavedCount(turn.cachePath)).toBeUndefined();
    expect(hooks.hasInitializedKey(MODEL, configHash, "missing")).toBe(false);
  });

  it("is idempotent: a second rollback does nothing, even to a cache a later turn primed", async () => {
    const session = createKvCacheSession(MODEL);
    const turn = await session.beginTurn({ kind: "custom", customKey: "twice", configHash, primeIfMissing: countingPrime() });
    await session.rollback(turn);
    const later = await customTurn(session, "twice", configHash, 3);
    await session.rollback(turn);
    expect(existsSync(later.cachePath)).toBe(true);
    expect(hooks.getSavedCount(later.cachePath)).toBe(3);
  });

  it("keeps the key directory while another config of the same key still has a cache", async () => {
    const session = createKvCacheSession(MODEL);
    const other = generateConfigHash("another prompt");
    const kept = await customTurn(session, "shared", other, 2);
    const turn = await session.beginTurn({ kind: "custom", customKey: "shared", configHash, primeIfMissing: countingPrime() });
    await session.rollback(turn);
    expect(existsSync(kept.cachePath)).toBe(true);
  });
});

describe("5. auto mode", () => {
  const history: CacheMessage[] = [
    { role: "system", content: "sys" },
    { role: "user", content: "hi" },
  ];

  it("looks up the history without its last message and commit moves the state to the target, dropping the source", async () => {
    const session = createKvCacheSession(MODEL);
    const prime = countingPrime();
    // Turn 1: nothing cached for [system] → primes (at the key of the whole history).
    const t1 = await session.beginTurn({ kind: "auto", configHash, history, primeIfMissing: prime });
    expect(prime.calls).toHaveLength(1);
    const reply = { role: "assistant", content: "hello there" };
    const target = session.autoCachePath(configHash, [...history, reply]);
    const bytes = await writeState(t1.savePath);
    await session.commitTurn(t1, { kind: "autoRename", targetCachePath: target, messageCount: 3 });
    expect(await fs.readFile(target)).toEqual(bytes);
    expect(existsSync(t1.cachePath)).toBe(false);
    expect(existsSync(path.dirname(path.dirname(t1.cachePath)))).toBe(false);
    expect(hooks.getSavedCount(t1.cachePath)).toBeUndefined();
    expect(hooks.getSavedCount(target)).toBe(3);

    // Turn 2: history grew by the reply and a new user message → finds the target.
    const t2 = await session.beginTurn({
      kind: "auto",
      configHash,
      history: [...history, reply, { role: "user", content: "more" }],
      primeIfMissing: prime,
    });
    expect(prime.calls).toHaveLength(1);
    expect(t2.cachePath).toBe(target);
    expect(t2.savedCount).toBe(3);
    await session.rollback(t2);
  });

  it("finds the cache when the app stored the reply with other whitespace or line endings", async () => {
    const session = createKvCacheSession(MODEL);
    const t1 = await session.beginTurn({ kind: "auto", configHash, history, primeIfMissing: countingPrime() });
    await writeState(t1.savePath);
    const target = session.autoCachePath(configHash, [...history, { role: "assistant", content: "  line one\r\nline two\n" }]);
    await session.commitTurn(t1, { kind: "autoRename", targetCachePath: target, messageCount: 3 });
    const t2 = await session.beginTurn({
      kind: "auto",
      configHash,
      history: [...history, { role: "assistant", content: "line one\nline two" }, { role: "user", content: "next" }],
      primeIfMissing: countingPrime(),
    });
    expect(t2.cachePath).toBe(target);
    await session.rollback(t2);
  });

  it("getCurrentCacheInfo names the same path as session.autoCachePath", async () => {
    const session = createKvCacheSession(MODEL);
    const info = await getCurrentCacheInfo(MODEL, configHash, history);
    expect(info.cachePath).toBe(session.autoCachePath(configHash, history));
    expect(info.cacheKey).toMatch(/^auto-[0-9a-f]{16}$/);
  });

  it("refuses a commit target that autoCachePath could not have produced", async () => {
    const session = createKvCacheSession(MODEL);
    const t1 = await session.beginTurn({ kind: "auto", configHash, history, primeIfMissing: countingPrime() });
    await writeState(t1.savePath);
    for (const targetCachePath of [
      path.join(root, "..", "escape.bin"),
      path.join(root, "custom-key", MODEL, `${configHash}.bin`),
      session.autoCachePath(generateConfigHash("other"), history),
    ]) {
      await expect(
        session.commitTurn(t1, { kind: "autoRename", targetCachePath, messageCount: 3 }),
      ).rejects.toMatchObject({ code: "INVALID_ARGUMENT", argument: "targetCachePath" });
    }
    await session.rollback(t1);
  });
});

describe("6. dropStaleSavedCount", () => {
  it("forgets only the count: the file and the init flag stay, and the next turn sees 0", async () => {
    const session = createKvCacheSession(MODEL);
    await customTurn(session, "stale", configHash, 99);
    const turn = await session.beginTurn({ kind: "custom", customKey: "stale", configHash, primeIfMissing: countingPrime() });
    expect(turn.savedCount).toBe(99);
    session.dropStaleSavedCount(turn);
    expect(hooks.getSavedCount(turn.cachePath)).toBeUndefined();
    expect(existsSync(turn.cachePath)).toBe(true);
    expect(hooks.hasInitializedKey(MODEL, configHash, "stale")).toBe(true);
    await writeState(turn.savePath);
    await session.commitTurn(turn, { kind: "static", messageCount: 2 });
    expect(hooks.getSavedCount(turn.cachePath)).toBe(2);
  });
});

describe("7. delete", () => {
  it("deleteKvCacheState({ kvCacheKey }) removes that key for every model, on disk and in memory", async () => {
    const a = createKvCacheSession("model-a");
    const b = createKvCacheSession("model-b");
    const ta = await customTurn(a, "doomed", configHash, 3);
    const tb = await customTurn(b, "doomed", configHash, 4);
    const kept = await customTurn(a, "kept", configHash, 5);
    await deleteKvCacheState({ kvCacheKey: "doomed" });
    for (const t of [ta, tb]) {
      expect(existsSync(t.cachePath)).toBe(false);
      expect(hooks.getSavedCount(t.cachePath)).toBeUndefined();
      expect(hooks.hasInitializedKey(t.modelId, configHash, "doomed")).toBe(false);
    }
    expect(existsSync(path.join(root, "doomed"))).toBe(false);
    expect(hooks.getSavedCount(kept.cachePath)).toBe(5);
    expect(existsSync(kept.cachePath)).toBe(true);
  });

  it("deleteKvCacheState({ kvCacheKey, modelId }) removes only that model's cache of the key", async () => {
    const a = createKvCacheSession("model-a");
    const b = createKvCacheSession("model-b");
    const ta = await customTurn(a, "k", configHash, 3);
    const tb = await customTurn(b, "k", configHash, 4);
    await deleteKvCacheState({ kvCacheKey: "k", modelId: "model-a" });
    expect(existsSync(ta.cachePath)).toBe(false);
    expect(hooks.hasInitializedKey("model-a", configHash, "k")).toBe(false);
    expect(existsSync(tb.cachePath)).toBe(true);
    expect(hooks.getSavedCount(tb.cachePath)).toBe(4);
    expect(hooks.hasInitializedKey("model-b", configHash, "k")).toBe(true);
  });

  it("deleteKvCacheState({ all: true }) removes every cache and every in-memory layer", async () => {
    const session = createKvCacheSession(MODEL);
    const t1 = await customTurn(session, "wipe-a", configHash, 1);
    const t2 = await customTurn(session, "wipe-b", configHash, 2);
    await deleteKvCacheState({ all: true });
    expect(await listTree(root)).toEqual([]);
    for (const t of [t1, t2]) {
      expect(hooks.getSavedCount(t.cachePath)).toBeUndefined();
      expect(hooks.hasInitializedKey(MODEL, configHash, t.cacheKey)).toBe(false);
    }
  });

  it("a turn open on a deleted key cannot commit its state back", async () => {
    const session = createKvCacheSession(MODEL);
    const turn = await session.beginTurn({ kind: "custom", customKey: "racing", configHash, primeIfMissing: countingPrime() });
    await writeState(turn.savePath);
    await deleteKvCacheState({ kvCacheKey: "racing" });
    expect(await session.commitTurn(turn, { kind: "static", messageCount: 2 })).toMatchObject({
      committed: false,
      reason: "deleted-during-turn",
      error: { code: "DELETED_DURING_TURN" },
      keptCommitted: false,
    });
    expect(await listTree(root)).toEqual([]);
  });
});

describe("8. keys, foreign handles and serialisation", () => {
  const unsafe: Array<[string, string]> = [
    ["", "KEY_EMPTY"],
    [".", "KEY_DOT_SEGMENT"],
    ["..", "KEY_DOT_SEGMENT"],
    ["a/b", "KEY_HAS_SEPARATOR"],
    ["a\\b", "KEY_HAS_SEPARATOR"],
    ["../../etc", "KEY_HAS_SEPARATOR"],
    ["a\0b", "KEY_HAS_NUL"],
    ["/etc/passwd", "KEY_ABSOLUTE"],
    ["C:\\x", "KEY_ABSOLUTE"],
    ["x".repeat(256), "KEY_TOO_LONG"],
    ["é".repeat(128), "KEY_TOO_LONG"],
    ["auto-0123456789abcdef", "KEY_RESERVED"],
    [".scopes", "KEY_RESERVED"],
    ["x\uD800", "KEY_LONE_SURROGATE"],
    ["x\uDBFF", "KEY_LONE_SURROGATE"],
    ["\uDC00x", "KEY_LONE_SURROGATE"],
  ];

  it.each(unsafe)("rejects custom key %j with %s before touching any file", async (customKey, code) => {
    const session = createKvCacheSession(MODEL);
    const prime = countingPrime();
    const error = await session.beginTurn({ kind: "custom", customKey, configHash, primeIfMissing: prime }).catch((e: unknown) => e);
    expect(error).toMatchObject({ code, argument: "customKey" });
    expect(prime.calls).toEqual([]);
    expect(await listTree(root)).toEqual([]);
  });

  it.each(unsafe.filter(([, code]) => code !== "KEY_RESERVED"))("rejects model id %j with %s", (modelId, code) => {
    expect(() => createKvCacheSession(modelId)).toThrow(expect.objectContaining({ code, argument: "modelId" }));
  });

  it("keeps keys that differ only in lone surrogates from sharing one directory: both are refused, a surrogate pair is a key like any", async () => {
    // "x\uD800" and "x\uDBFF" would both be written as "x\uFFFD": one directory, two keys.
    await expect(deleteKvCacheState({ kvCacheKey: "x\uD800" })).rejects.toMatchObject({ code: "KEY_LONE_SURROGATE", argument: "kvCacheKey" });
    const session = createKvCacheSession(MODEL);
    const emoji = await customTurn(session, "chat-\u{1F600}", configHash, 2);
    expect(path.basename(path.dirname(path.dirname(emoji.cachePath)))).toBe("chat-\u{1F600}");
  });

  it("rejects unsafe delete keys and a config hash that is not a plain name", async () => {
    await expect(deleteKvCacheState({ kvCacheKey: ".." })).rejects.toMatchObject({ code: "KEY_DOT_SEGMENT", argument: "kvCacheKey" });
    await expect(deleteKvCacheState({ kvCacheKey: "k", modelId: "a/b" })).rejects.toMatchObject({ argument: "modelId" });
    const session = createKvCacheSession(MODEL);
    await expect(
      session.beginTurn({ kind: "custom", customKey: "k", configHash: "../x", primeIfMissing: countingPrime() }),
    ).rejects.toMatchObject({ argument: "configHash" });
    expect(await listTree(root)).toEqual([]);
  });

  it("ignores a handle passed to another session, and a handle after its commit or rollback", async () => {
    const owner = createKvCacheSession(MODEL);
    const stranger = createKvCacheSession(MODEL);
    const turn = await owner.beginTurn({ kind: "custom", customKey: "mine", configHash, primeIfMissing: countingPrime() });
    await writeState(turn.savePath);
    await stranger.rollback(turn);
    stranger.dropStaleSavedCount(turn);
    expect(await stranger.commitTurn(turn, { kind: "static", messageCount: 1 })).toEqual({ committed: false, reason: "not-open" });
    expect(existsSync(turn.cachePath)).toBe(true);
    expect(existsSync(turn.savePath)).toBe(true);
    await owner.commitTurn(turn, { kind: "static", messageCount: 6 });
    owner.dropStaleSavedCount(turn);
    expect(hooks.getSavedCount(turn.cachePath)).toBe(6);
    // A forged object with the same fields is not a handle either.
    await owner.rollback({ ...turn });
    expect(existsSync(turn.cachePath)).toBe(true);
  });

  it("serialises two turns on the same file: the second begins only after the first ends", async () => {
    const session = createKvCacheSession(MODEL);
    const first = await session.beginTurn({ kind: "custom", customKey: "fifo", configHash, primeIfMissing: countingPrime() });
    let secondBegan = false;
    const second = session
      .beginTurn({ kind: "custom", customKey: "fifo", configHash, primeIfMissing: countingPrime() })
      .then((t) => {
        secondBegan = true;
        return t;
      });
    await new Promise((r) => setImmediate(r));
    expect(secondBegan).toBe(false);
    await writeState(first.savePath);
    await session.commitTurn(first, { kind: "static", messageCount: 2 });
    const t2 = await second;
    expect(t2.savedCount).toBe(2);
    await session.rollback(t2);
  });

  it("a waiting turn whose signal aborts rejects with ABORTED at once and gives its place up", async () => {
    const session = createKvCacheSession(MODEL);
    const holder = await session.beginTurn({ kind: "custom", customKey: "busy", configHash, primeIfMissing: countingPrime() });
    const controller = new AbortController();
    const aborted = session.beginTurn({
      kind: "custom",
      customKey: "busy",
      configHash,
      primeIfMissing: countingPrime(),
      signal: controller.signal,
    });
    const third = session.beginTurn({ kind: "custom", customKey: "busy", configHash, primeIfMissing: countingPrime() });
    controller.abort(new Error("user cancelled"));
    await expect(aborted).rejects.toMatchObject({ code: "ABORTED" });
    await session.rollback(holder);
    const t3 = await third;
    expect(t3.primed).toBe(true);
    await session.rollback(t3);
    expect(await listTree(root)).toEqual([]);
  });

  it("an already-aborted signal rejects before anything is touched", async () => {
    const session = createKvCacheSession(MODEL);
    await expect(
      session.beginTurn({ kind: "custom", customKey: "x", configHash, primeIfMissing: countingPrime(), signal: AbortSignal.abort() }),
    ).rejects.toMatchObject({ code: "ABORTED" });
    expect(await listTree(root)).toEqual([]);
  });
});
