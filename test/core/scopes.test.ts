/**
 * Isolation scopes at the store, on real roots with real files (fake engine bytes): the same
 * key in two scopes is two caches, prefix reuse never crosses a scope, deletes, retention,
 * recovery and trust all know whose a cache is, the scope is never written in clear, and a
 * root without scopes keeps its layout.
 */
import { promises as fs, readdirSync, readFileSync, statSync } from "node:fs";
import path from "node:path";
import { describe, expect, it } from "vitest";
import { scopeIdOf } from "../../src/keys/scope.js";
import { manifestPathOf, tempPathFor } from "../../src/layout/paths.js";
import { KvCacheStoreImpl } from "../../src/facade/kvkeep-store.js";
import type { CacheMessage, TurnEvent } from "../../src/types.js";
import { listTree } from "../helpers/fake-engine.js";
import { tempDir } from "../helpers/temp-root.js";
import { commitAutoConversation, commitNamedConversation, configHash, conversation, MODEL, SYSTEM, user, writeSelfCheckingState } from "../index/helpers.js";

const ALICE = "alice@example.com";
const MALLORY = "mallory@example.com";

function openStore(root: string, options: ConstructorParameters<typeof KvCacheStoreImpl>[0] = {}): KvCacheStoreImpl {
  return new KvCacheStoreImpl({ root, onRollback: "keep-committed", ...options });
}

/** Every file's bytes and every path under `dir` (kvkeep's own `.kvkeep/` included), as one string. */
function everythingUnder(dir: string): string {
  const parts: string[] = [];
  const walk = (d: string): void => {
    for (const name of readdirSync(d)) {
      const p = path.join(d, name);
      parts.push(p);
      if (statSync(p).isDirectory()) walk(p);
      else parts.push(readFileSync(p, "latin1"));
    }
  };
  walk(dir);
  return parts.join("\n");
}

/** A turn of `history` on the named cache `key`: resolves to what it began with. */
async function peekNamed(store: KvCacheStoreImpl, scope: string | undefined, key: string): Promise<{ savedCount: number; primed: boolean; cachePath: string }> {
  const session = store.createSession(MODEL, scope === undefined ? {} : { scope });
  const turn = await session.beginTurn({ kind: "custom", customKey: key, configHash, primeIfMissing: (p) => writeSelfCheckingState(p, 64) });
  await session.rollback(turn);
  return { savedCount: turn.savedCount, primed: turn.primed, cachePath: turn.cachePath };
}

describe("scopes keep caches apart", () => {
  it("the same named key in two scopes (and in the shared space) is three caches, each resuming only its own conversation", async () => {
    const root = tempDir();
    const store = openStore(root);
    const aliceChat = await commitNamedConversation(store.createSession(MODEL, { scope: ALICE }), "chat", conversation("alice", 2));
    const sharedChat = await commitNamedConversation(store.createSession(MODEL), "chat", conversation("shared", 1));
    expect(new Set([aliceChat, sharedChat]).size).toBe(2);
    expect(await peekNamed(store, ALICE, "chat")).toMatchObject({ savedCount: 5, primed: false, cachePath: aliceChat });
    expect(await peekNamed(store, undefined, "chat")).toMatchObject({ savedCount: 3, primed: false, cachePath: sharedChat });
    // Mallory asking for "chat" gets a cache of her own, primed: Alice's is not hers to resume.
    const mallory = await peekNamed(store, MALLORY, "chat");
    expect(mallory.primed).toBe(true);
    expect(mallory.savedCount).toBe(0);
    expect(new Set([aliceChat, sharedChat, mallory.cachePath]).size).toBe(3);
    await store.close();
  });

  it("auto-mode keys of one history in two scopes are two caches", async () => {
    const root = tempDir();
    const store = openStore(root);
    const history = conversation("same", 1);
    const alice = store.createSession(MODEL, { scope: ALICE });
    const mallory = store.createSession(MODEL, { scope: MALLORY });
    const aliceCache = await commitAutoConversation(alice, history);
    expect(alice.autoCachePath(configHash, history)).toBe(aliceCache);
    expect(mallory.autoCachePath(configHash, history)).not.toBe(aliceCache);
    // Mallory's next turn of the same history finds nothing to resume: it primes its own.
    const turn = await mallory.beginTurn({ kind: "auto", configHash, history: [...history, user("next")], primeIfMissing: (p) => writeSelfCheckingState(p, 64) });
    expect(turn.primed).toBe(true);
    expect(turn.cachePath).not.toBe(aliceCache);
    await mallory.rollback(turn);
    await store.close();
  });

  it("findPrefix and borrowPrefix never return or lend another scope's cache; within a scope they do", async () => {
    const root = tempDir();
    const store = openStore(root);
    const victim = [SYSTEM, user("My account PIN is 4711 and my name is Alice Smith."), { role: "assistant", content: "Noted." }] as CacheMessage[];
    const source = await commitNamedConversation(store.createSession(MODEL, { scope: ALICE }), "bank", victim);
    const guess = [SYSTEM, user("My account PIN is 4711 and my name is Alice Smith."), { role: "assistant", content: "Noted." }, user("what is it?")];
    const query = { modelId: MODEL, configHash, history: guess };
    expect(await store.findPrefix({ ...query, scope: MALLORY })).toBeNull();
    expect(await store.findPrefix(query)).toBeNull(); // the shared space is another space too
    let lent = false;
    expect(await store.borrowPrefix({ ...query, scope: MALLORY }, async () => (lent = true))).toBeNull();
    expect(lent).toBe(false);
    expect(await store.findPrefix({ ...query, scope: ALICE })).toMatchObject({ cachePath: source, commonMessages: 3 });
    expect(await store.borrowPrefix({ ...query, scope: ALICE }, async (s) => s.cachePath)).toEqual({ value: source });
    await store.close();
  });

  it("a new chat from a shared system prompt reuses within its scope only: each scope primes its own", async () => {
    const root = tempDir();
    const store = openStore(root);
    await commitAutoConversation(store.createSession(MODEL, { scope: ALICE }), conversation("alice", 1));
    const newChat = [SYSTEM, user("hello")];
    expect(await store.findPrefix({ modelId: MODEL, configHash, history: newChat, scope: MALLORY })).toBeNull();
    await commitAutoConversation(store.createSession(MODEL, { scope: MALLORY }), conversation("mallory", 1));
    const match = await store.findPrefix({ modelId: MODEL, configHash, history: newChat, scope: MALLORY });
    expect(match).toMatchObject({ commonMessages: 1 });
    expect(match!.cachePath).toContain(scopeIdOf(MALLORY));
    await store.close();
  });
});

describe("what is on disk", () => {
  it("a root without scopes keeps its layout; a scope lives under .scopes/<id>/, and the scope itself is written nowhere", async () => {
    const root = tempDir();
    const store = openStore(root);
    const shared = await commitNamedConversation(store.createSession(MODEL), "chat", conversation("a", 1));
    expect(path.relative(root, shared)).toBe(path.join("chat", MODEL, `${configHash}.bin`));
    const scoped = await commitNamedConversation(store.createSession(MODEL, { scope: ALICE }), "chat", conversation("b", 1));
    const id = scopeIdOf(ALICE);
    expect(id).toMatch(/^[0-9a-f]{32}$/);
    expect(path.relative(root, scoped)).toBe(path.join(".scopes", id, "chat", MODEL, `${configHash}.bin`));
    expect(JSON.parse(readFileSync(manifestPathOf(scoped), "utf8"))).toMatchObject({ scope: id, cacheKey: "chat" });
    expect(JSON.parse(readFileSync(manifestPathOf(shared), "utf8"))).not.toHaveProperty("scope");
    await store.delete({ kvCacheKey: "chat", scope: ALICE });
    await store.close();
    // Paths, manifests, the index log and the delete log: the scope is only ever its id.
    const everything = everythingUnder(root);
    expect(everything).toContain(id);
    expect(everything).not.toContain(ALICE);
    expect(everything).not.toContain("alice");
  });

  it("the root kvkeep creates, and every directory in it, is private to the user (0700)", async () => {
    const root = path.join(tempDir(), "new", "root");
    const store = openStore(root);
    const cache = await commitNamedConversation(store.createSession(MODEL, { scope: ALICE }), "chat", conversation("a", 1));
    await store.close();
    const dirs = [path.dirname(root), root, path.join(root, ".kvkeep"), path.join(root, ".scopes"), path.dirname(path.dirname(cache)), path.dirname(cache)];
    for (const dir of dirs) expect({ dir, mode: statSync(dir).mode & 0o777 }).toEqual({ dir, mode: 0o700 });
  });

  it("a cache of one scope copied into another scope's space is refused as foreign, never loaded", async () => {
    const root = tempDir();
    const store = openStore(root);
    const aliceChat = await commitNamedConversation(store.createSession(MODEL, { scope: ALICE }), "chat", conversation("alice", 1));
    const malloryChat = (await peekNamed(store, MALLORY, "chat")).cachePath;
    await store.delete({ kvCacheKey: "chat", scope: MALLORY });
    await fs.mkdir(path.dirname(malloryChat), { recursive: true });
    await fs.copyFile(aliceChat, malloryChat);
    await fs.copyFile(manifestPathOf(aliceChat), manifestPathOf(malloryChat));
    const fresh = openStore(root);
    const session = fresh.createSession(MODEL, { scope: MALLORY });
    const turn = await session.beginTurn({ kind: "custom", customKey: "chat", configHash, primeIfMissing: (p) => writeSelfCheckingState(p, 64) });
    expect(turn.refused).toMatchObject({ reason: "foreign", detail: "manifest is for another scope" });
    expect(turn).toMatchObject({ primed: true, savedCount: 0 });
    await session.rollback(turn);
    await fresh.close();
    await store.close();
  });

  it("a commit target of another scope is refused (INVALID_ARGUMENT), nothing committed", async () => {
    const store = openStore(tempDir());
    const alice = store.createSession(MODEL, { scope: ALICE });
    const mallory = store.createSession(MODEL, { scope: MALLORY });
    const history = [SYSTEM, user("hi")];
    const turn = await mallory.beginTurn({ kind: "auto", configHash, history, primeIfMissing: (p) => writeSelfCheckingState(p, 64) });
    await writeSelfCheckingState(turn.savePath);
    const target = alice.autoCachePath(configHash, [...history, { role: "assistant", content: "hello" }]);
    await expect(mallory.commitTurn(turn, { kind: "autoRename", targetCachePath: target, messageCount: 3 })).rejects.toMatchObject({
      code: "INVALID_ARGUMENT",
      argument: "targetCachePath",
    });
    await mallory.rollback(turn);
    expect(await fs.stat(target).catch(() => null)).toBeNull();
    await store.close();
  });

  it("refuses a scope that is empty, not a string, too long or not well-formed UTF-16", async () => {
    const store = openStore(tempDir());
    for (const scope of ["", 42, "x".repeat(1025), "user\uD800", "\uDC00"]) {
      expect(() => store.createSession(MODEL, { scope } as never)).toThrow(expect.objectContaining({ code: "INVALID_ARGUMENT", argument: "scope" }));
    }
    await expect(store.findPrefix({ modelId: MODEL, configHash, history: [user("x")], scope: "a\uD800" })).rejects.toMatchObject({ argument: "scope" });
    await expect(store.delete({ kvCacheKey: "chat", scope: "" })).rejects.toMatchObject({ argument: "scope" });
    // Scopes that would be one string once written as UTF-8 are refused, so two scopes never share an id.
    expect(scopeIdOf("user\u{1F600}")).not.toBe(scopeIdOf("user\uFFFD"));
    await store.close();
  });
});

describe("deletes, retention and recovery know whose a cache is", () => {
  it("delete({ kvCacheKey, scope }) removes that scope's key only; without a scope only the shared space's; { all } every scope's", async () => {
    const root = tempDir();
    const store = openStore(root);
    const key = "chat";
    const paths = {
      alice: await commitNamedConversation(store.createSession(MODEL, { scope: ALICE }), key, conversation("a", 1)),
      mallory: await commitNamedConversation(store.createSession(MODEL, { scope: MALLORY }), key, conversation("m", 1)),
      shared: await commitNamedConversation(store.createSession(MODEL), key, conversation("s", 1)),
    };
    const exists = async (p: string): Promise<boolean> => (await fs.stat(p).catch(() => null)) !== null;
    await store.delete({ kvCacheKey: key, scope: ALICE });
    expect([await exists(paths.alice), await exists(paths.mallory), await exists(paths.shared)]).toEqual([false, true, true]);
    await store.delete({ kvCacheKey: key });
    expect([await exists(paths.mallory), await exists(paths.shared)]).toEqual([true, false]);
    await store.delete({ kvCacheKey: key, scopeId: scopeIdOf(MALLORY) });
    expect(await exists(paths.mallory)).toBe(false);
    // Emptied directories are pruned up to the root.
    expect(await listTree(root)).toEqual([]);

    await commitNamedConversation(store.createSession(MODEL, { scope: ALICE }), key, conversation("a", 1));
    await commitNamedConversation(store.createSession(MODEL), "other", conversation("s", 1));
    await store.delete({ all: true });
    expect(await listTree(root)).toEqual([]);
    await expect(store.delete({ kvCacheKey: key, scope: ALICE, scopeId: scopeIdOf(ALICE) } as never)).rejects.toMatchObject({ argument: "scopeId" });
    await expect(store.delete({ kvCacheKey: key, scopeId: "alice" })).rejects.toMatchObject({ argument: "scopeId" });
    // "Everything" is every scope's: a scope given with it is refused, never widened to all.
    const kept = await commitNamedConversation(store.createSession(MODEL), "kept", conversation("k", 1));
    await expect(store.delete({ all: true, scope: ALICE } as never)).rejects.toMatchObject({ code: "INVALID_ARGUMENT", argument: "scope" });
    expect(await exists(kept)).toBe(true);
    await store.close();
  });

  it("a delete in one scope ends a turn open on that scope's key (DELETED_DURING_TURN), never one on the same key of another scope", async () => {
    const root = tempDir();
    const store = openStore(root);
    const alice = store.createSession(MODEL, { scope: ALICE });
    const mallory = store.createSession(MODEL, { scope: MALLORY });
    const begin = (s: typeof alice) => s.beginTurn({ kind: "custom", customKey: "chat", configHash, primeIfMissing: (p) => writeSelfCheckingState(p, 64) });
    const [aliceTurn, malloryTurn] = [await begin(alice), await begin(mallory)];
    await writeSelfCheckingState(aliceTurn.savePath);
    await writeSelfCheckingState(malloryTurn.savePath);
    // Another store on the root deletes Mallory's "chat" (its record reaches this store through the delete log).
    const other = openStore(root);
    await other.delete({ kvCacheKey: "chat", scope: MALLORY });
    await other.close();
    expect(await alice.commitTurn(aliceTurn, { kind: "static", messageCount: 2 })).toMatchObject({ committed: true });
    expect(await mallory.commitTurn(malloryTurn, { kind: "static", messageCount: 2 })).toMatchObject({ committed: false, reason: "deleted-during-turn" });
    await store.close();
  });

  it("retention indexes, counts and evicts scoped caches, and reports whose they were by scope id", async () => {
    const root = tempDir();
    const store = openStore(root);
    await commitAutoConversation(store.createSession(MODEL, { scope: ALICE }), conversation("a", 1), 3000);
    await commitAutoConversation(store.createSession(MODEL), conversation("s", 1), 2000);
    expect(await store.usage()).toMatchObject({ count: 2, autoBytes: 3032 + 2032 }); // (each state ends with its 32-byte SHA-256)
    // Another store's walk at open finds the scoped cache too (recovery and the index use one walk).
    const reopened = openStore(root);
    await reopened.ready;
    expect(await reopened.usage()).toMatchObject({ count: 2 });
    const result = await reopened.sweep({ maxBytes: 0 });
    expect(result.evicted.map((e) => e.scopeId).sort()).toEqual([null, scopeIdOf(ALICE)].sort());
    expect(await listTree(root)).toEqual([]);
    await reopened.close();
    await store.close();
  });

  it("recovery at open removes a dead writer's temp file inside a scope's space", async () => {
    const root = tempDir();
    const store = openStore(root);
    const cache = await commitNamedConversation(store.createSession(MODEL, { scope: ALICE }), "chat", conversation("a", 1));
    await store.close();
    // Named as kvkeep names its temps (a 10-hex incarnation stamp): a name without one is not
    // kvkeep's and is never removed (test/cli/foreign-root.test.ts). Pid 999999999 is no process.
    const deadTemp = tempPathFor(cache, 999_999_999, "deadbeef01");
    await fs.writeFile(deadTemp, "left by a crash");
    const reopened = openStore(root);
    expect(await reopened.ready).toMatchObject({ removedTemps: 1 });
    expect(await fs.stat(deadTemp).catch(() => null)).toBeNull();
    await reopened.close();
  });

  it("turn events name the scope by its id, and a scoped conversation's default id carries it", async () => {
    const store = openStore(tempDir());
    const events: TurnEvent[] = [];
    store.onTurnEvent((e) => events.push(e));
    await commitNamedConversation(store.createSession(MODEL, { scope: ALICE }), "chat", conversation("a", 1));
    await commitNamedConversation(store.createSession(MODEL), "chat", conversation("s", 1));
    const id = scopeIdOf(ALICE);
    expect(events.map((e) => [e.type, e.scopeId, e.conversationId])).toEqual([
      ["turnStarted", id, `${id}/chat`],
      ["turnSettled", id, `${id}/chat`],
      ["turnStarted", null, "chat"],
      ["turnSettled", null, "chat"],
    ]);
    await store.close();
  });
});
