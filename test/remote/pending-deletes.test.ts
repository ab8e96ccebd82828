/**
 * Issue 20, item 5: a delete made while Redis is down is pending for every store on the root,
 * not only in the memory of the store that made it. A real redis-server, killed and restarted
 * from its snapshot (which still holds the deleted conversation); stores in this process and
 * a deleting process killed with SIGKILL.
 */
import { existsSync, promises as fs } from "node:fs";
import path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { openKvCacheStore } from "../../src/index.js";
import { scopeIdOf } from "../../src/keys/scope.js";
import { createRedisTier } from "../../src/remote/redis/index.js";
import { keyTag } from "../../src/remote/redis/keys.js";
import { parsePendingDeletes } from "../../src/store/pending-remote-deletes.js";
import type { InternalStoreOptions, KvCacheStore } from "../../src/facade/kvkeep-store.js";
import { bundleFixture, runChild } from "../helpers/child.js";
import { commitAutoConversation, commitNamedConversation, configHash, conversation, MODEL, user, writeSelfCheckingState } from "../index/helpers.js";
import { tempDir } from "../helpers/temp-root.js";
import { type RedisServer, startRedis } from "./helpers/redis-server.js";
import { recordingLogger } from "./helpers/states.js";

const FINGERPRINT = "fp-pending-deletes";
let server: RedisServer;
let tenant = 0;
beforeAll(async () => {
  server = await startRedis();
});
afterAll(async () => {
  await server?.stop();
});

const sessions = new WeakMap<KvCacheStore, ReturnType<KvCacheStore["createSession"]>>();
function session(store: KvCacheStore): ReturnType<KvCacheStore["createSession"]> {
  let s = sessions.get(store);
  if (!s) sessions.set(store, (s = store.createSession(MODEL, { fingerprint: FINGERPRINT })));
  return s;
}

/** A turn on `key` resumes nothing of the deleted conversation (here or from Redis): it starts from 0 messages. */
async function expectMiss(store: KvCacheStore, key: string): Promise<void> {
  const turn = await session(store).beginTurn({ kind: "custom", customKey: key, configHash, primeIfMissing: (p) => writeSelfCheckingState(p, 64) });
  expect(turn.savedCount, `${key} came back`).toBe(0);
  await session(store).rollback(turn);
}

/** One machine's root, shared by the stores of a test; its tenant prefix in the shared Redis. */
function machine() {
  const root = tempDir();
  const keyPrefix = `kvkeep:pd${++tenant}:`;
  const logger = recordingLogger();
  const open = (internals: InternalStoreOptions = {}): KvCacheStore =>
    openKvCacheStore({ root, logger, remote: createRedisTier({ url: server.url, keyPrefix, chunkBytes: 4096, timeoutMs: 200 }), ...internals });
  const remoteKeys = (key: string): Promise<string> => server.cli("--scan", "--pattern", `${keyPrefix}{${keyTag(key)}}:[hd]*`);
  return { root, keyPrefix, logger, open, remoteKeys };
}

/** Wait until `store` reaches Redis again: a conversation another machine uploaded comes through as a prefix. */
async function waitUntilServed(store: KvCacheStore, probe: ReturnType<typeof conversation>): Promise<void> {
  const query = { modelId: MODEL, fingerprint: FINGERPRINT, configHash, history: [...probe.slice(0, 3), user("other")] };
  const deadline = Date.now() + 20_000;
  while (!(await store.findPrefix(query)) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 100));
  expect(await store.findPrefix(query)).not.toBeNull();
}

/** Upload `key` (and a probe conversation) from a machine of its own, then snapshot Redis. */
async function uploadedAndSaved(keyPrefix: string, key: string): Promise<ReturnType<typeof conversation>> {
  const elsewhere = openKvCacheStore({ root: tempDir(), remote: createRedisTier({ url: server.url, keyPrefix, chunkBytes: 4096, timeoutMs: 3000 }) });
  await commitNamedConversation(session(elsewhere), key, conversation("secret", 2));
  const probe = conversation(`probe-${key}`, 2);
  await commitAutoConversation(session(elsewhere), probe);
  await elsewhere.close(); // uploaded
  await server.cli("SAVE"); // Redis will come back with the state (a restart from its snapshot)
  return probe;
}

describe("deletes made while Redis is down are honoured by every store on the root (issue 20, item 5)", () => {
  it("another store on the root does not read it back; after the deleting store closed, the next store neither loads it nor forgets to send it", async () => {
    const { root, keyPrefix, logger, open, remoteKeys } = machine();
    const probe = await uploadedAndSaved(keyPrefix, "forget-offline");
    // Two stores on one root (two app processes would be the same): neither retries on its own during the test.
    const a = open({ remoteInternals: { deleteRetryFirstMs: 600_000 } });
    const b = open({ remoteInternals: { deleteRetryFirstMs: 600_000 } });
    await server.kill();
    try {
      await a.delete({ kvCacheKey: "forget-offline" });
    } finally {
      await server.restart();
    }
    await waitUntilServed(b, probe);
    expect(await remoteKeys("forget-offline")).not.toBe(""); // Redis serves the deleted state again…
    await expectMiss(b, "forget-offline"); // …and the other store on the root does not take it
    expect(existsSync(path.join(root, ".kvkeep", "remote-deletes.json"))).toBe(true);

    // The deleting store closes while Redis is down: its last retry fails, the delete stays recorded.
    await server.kill();
    try {
      await Promise.all([a.close(), b.close()]);
    } finally {
      await server.restart();
    }
    expect(logger.lines.some((l) => l.line.includes("the next store on it sends them"))).toBe(true);
    expect(await remoteKeys("forget-offline")).not.toBe("");
    // The next store on the root: never loads it, and sends the delete once Redis answers.
    const c = open({ remoteInternals: { deleteRetryFirstMs: 100 } });
    await expectMiss(c, "forget-offline");
    const deadline = Date.now() + 20_000;
    while ((await remoteKeys("forget-offline")) !== "" && Date.now() < deadline) await new Promise((r) => setTimeout(r, 100));
    expect(await remoteKeys("forget-offline")).toBe("");
    expect(existsSync(path.join(root, ".kvkeep", "remote-deletes.json"))).toBe(false); // taken: nothing pending
    await c.close();
    // And another machine does not get it back either.
    const other = openKvCacheStore({ root: tempDir(), remote: createRedisTier({ url: server.url, keyPrefix, timeoutMs: 3000 }) });
    await expectMiss(other, "forget-offline");
    await other.close();
  });

  it("a deleting process killed before it could send the delete: the next store on the root honours and sends it", async () => {
    const { root, keyPrefix, open, remoteKeys } = machine();
    await uploadedAndSaved(keyPrefix, "killed-deleter");
    await server.kill();
    try {
      const worker = runChild(await bundleFixture("test/remote/fixtures/delete-worker.ts"), [root, server.url, keyPrefix, "killed-deleter"]);
      await worker.waitForLine((line) => line === "deleted");
      worker.child.kill("SIGKILL");
      await worker.exited;
    } finally {
      await server.restart();
    }
    expect(JSON.parse(await fs.readFile(path.join(root, ".kvkeep", "remote-deletes.json"), "utf8")).deletes).toMatchObject([
      { target: { kvCacheKey: "killed-deleter" } },
    ]);
    const next = open({ remoteInternals: { deleteRetryFirstMs: 100 } });
    await expectMiss(next, "killed-deleter");
    const deadline = Date.now() + 20_000;
    while ((await remoteKeys("killed-deleter")) !== "" && Date.now() < deadline) await new Promise((r) => setTimeout(r, 100));
    expect(await remoteKeys("killed-deleter")).toBe("");
    await next.close();
  });

  it("a pending delete names its scope: the same key of another scope and of the shared space is still read back, and only that scope's copy goes when it is sent", async () => {
    const { root, keyPrefix, open } = machine();
    const [ALICE, BOB] = ["tenant:alice", "tenant:bob"];
    const scoped = (store: KvCacheStore, scope?: string) => store.createSession(MODEL, { fingerprint: FINGERPRINT, ...(scope === undefined ? {} : { scope }) });
    /** What a turn on "chat" in `scope` starts from on `store` (then rolled back). */
    const peek = async (store: KvCacheStore, scope?: string): Promise<number> => {
      const s = scoped(store, scope);
      const turn = await s.beginTurn({ kind: "custom", customKey: "chat", configHash, primeIfMissing: (p) => writeSelfCheckingState(p, 64) });
      await s.rollback(turn);
      return turn.savedCount;
    };
    const remoteKeysOf = (scopeId: string | null): Promise<string> => server.cli("--scan", "--pattern", `${keyPrefix}{${keyTag("chat", scopeId)}}:[hd]*`);
    // Another machine uploads "chat" in Alice's scope, Bob's and the shared space; Redis snapshots them.
    const elsewhere = openKvCacheStore({ root: tempDir(), remote: createRedisTier({ url: server.url, keyPrefix, chunkBytes: 4096, timeoutMs: 3000 }) });
    await commitNamedConversation(scoped(elsewhere, ALICE), "chat", conversation("alice", 1));
    await commitNamedConversation(scoped(elsewhere, BOB), "chat", conversation("bob", 2));
    await commitNamedConversation(scoped(elsewhere), "chat", conversation("shared", 3));
    const probe = conversation("probe-scoped", 2);
    await commitAutoConversation(session(elsewhere), probe);
    await elsewhere.close();
    await server.cli("SAVE");

    const a = open({ remoteInternals: { deleteRetryFirstMs: 600_000 } });
    const b = open({ remoteInternals: { deleteRetryFirstMs: 600_000 } });
    await server.kill();
    try {
      await a.delete({ kvCacheKey: "chat", scope: ALICE });
    } finally {
      await server.restart();
    }
    expect(JSON.parse(await fs.readFile(path.join(root, ".kvkeep", "remote-deletes.json"), "utf8")).deletes).toMatchObject([
      { target: { scopeId: scopeIdOf(ALICE), kvCacheKey: "chat" } },
    ]);
    await waitUntilServed(b, probe);
    expect(await remoteKeysOf(scopeIdOf(ALICE))).not.toBe(""); // Redis came back with Alice's state…
    expect(await peek(b, ALICE)).toBe(0); // …which no store on the root reads back,
    expect(await peek(b, BOB)).toBe(5); // while Bob's "chat" and the shared space's are read through as ever
    expect(await peek(b, undefined)).toBe(7);
    await Promise.all([a.close(), b.close()]); // Redis is up: the delete is sent
    expect(existsSync(path.join(root, ".kvkeep", "remote-deletes.json"))).toBe(false);
    expect(await remoteKeysOf(scopeIdOf(ALICE))).toBe("");
    expect(await remoteKeysOf(scopeIdOf(BOB))).not.toBe("");
    expect(await remoteKeysOf(null)).not.toBe("");
  });

  it("an entry of the root's list is honoured only with the scope it names: a key's entry without a well-formed scopeId is dropped, not taken for the shared space's", () => {
    const id = scopeIdOf("tenant:alice");
    const file = (targets: unknown[]): string =>
      JSON.stringify({ format: 1, deletes: targets.map((target, i) => ({ id: `${i}`.padStart(16, "0"), target })) });
    expect(
      parsePendingDeletes(
        file([
          { scopeId: id, kvCacheKey: "chat" },
          { scopeId: null, kvCacheKey: "chat", modelId: "m" },
          { all: true },
          { kvCacheKey: "chat" }, // no scope said
          { scopeId: "tenant:alice", kvCacheKey: "chat" }, // a scope, not its id
          { scopeId: id.toUpperCase(), kvCacheKey: "chat" },
          { scopeId: 7, kvCacheKey: "chat" },
        ]),
      )?.map((d) => d.target),
    ).toEqual([{ scopeId: id, kvCacheKey: "chat" }, { scopeId: null, kvCacheKey: "chat", modelId: "m" }, { all: true }]);
  });
});
