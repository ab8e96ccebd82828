/**
 * Scopes through a real redis-server: stores on separate roots (separate machines) sharing one
 * tier under one key prefix. A state of one scope is never read through, found by the shared
 * prefix index, or removed by a delete, from another scope (nor from the shared space); the
 * same scope on another machine resumes and reuses it; Redis holds no scope in clear.
 */
import { createClient } from "redis";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { openKvCacheStore } from "../../src/index.js";
import { scopeIdOf } from "../../src/keys/scope.js";
import { createRedisTier } from "../../src/remote/redis/index.js";
import { parseRecord, serializeRecord } from "../../src/remote/record.js";
import type { KvCacheStore } from "../../src/facade/kvkeep-store.js";
import { tempDir } from "../helpers/temp-root.js";
import { commitAutoConversation, commitNamedConversation, configHash, conversation, MODEL, SYSTEM, user, writeSelfCheckingState } from "../index/helpers.js";
import { type RedisServer, startRedis } from "./helpers/redis-server.js";
import { TEST_TIMEOUT_MS } from "./helpers/states.js";

const ALICE = "alice@example.com";
const MALLORY = "mallory@example.com";

let server: RedisServer;
let tenant = 0;
beforeAll(async () => {
  server = await startRedis();
});
afterAll(async () => {
  await server?.stop();
});

function machines() {
  const keyPrefix = `kvkeep:s${++tenant}:`;
  const open = (): KvCacheStore =>
    openKvCacheStore({ root: tempDir(), remote: createRedisTier({ url: server.url, keyPrefix, chunkBytes: 4096, timeoutMs: TEST_TIMEOUT_MS }) });
  return { open, keyPrefix };
}

const sessionOf = (store: KvCacheStore, scope?: string) => store.createSession(MODEL, scope === undefined ? {} : { scope });

/** What a turn on the named `key` in `scope` starts from on `store` (then rolled back). */
async function peek(store: KvCacheStore, scope: string | undefined, key: string): Promise<{ savedCount: number; primed: boolean }> {
  const session = sessionOf(store, scope);
  const turn = await session.beginTurn({ kind: "custom", customKey: key, configHash, primeIfMissing: (p) => writeSelfCheckingState(p, 64) });
  await session.rollback(turn);
  return { savedCount: turn.savedCount, primed: turn.primed };
}

describe("scopes through the Redis tier", () => {
  it("a machine in another scope (or the shared space) gets nothing of one scope's states; a machine in the same scope resumes and reuses them", async () => {
    const { open } = machines();
    const a = open();
    const secret = conversation("secret", 2);
    await commitAutoConversation(sessionOf(a, ALICE), secret, 20_000);
    await commitNamedConversation(sessionOf(a, ALICE), "chat", conversation("named", 1), { size: 10_000 });
    await a.close(); // its uploads are done

    const deep = [...secret, user("and then?")];
    const newChat = [SYSTEM, user("hello")];
    for (const scope of [MALLORY, undefined]) {
      const b = open();
      expect(await peek(b, scope, "chat")).toEqual({ savedCount: 0, primed: true });
      const asked = { modelId: MODEL, configHash, ...(scope === undefined ? {} : { scope }) };
      expect(await b.findPrefix({ ...asked, history: deep })).toBeNull();
      expect(await b.findPrefix({ ...asked, history: newChat })).toBeNull();
      const turn = await sessionOf(b, scope).beginTurn({ kind: "auto", configHash, history: deep, primeIfMissing: (p) => writeSelfCheckingState(p, 64) });
      expect(turn).toMatchObject({ primed: true, savedCount: 0 });
      await sessionOf(b, scope).rollback(turn);
      await b.close();
    }

    const c = open();
    expect(await peek(c, ALICE, "chat")).toEqual({ savedCount: 3, primed: false });
    expect(await c.findPrefix({ modelId: MODEL, configHash, history: deep, scope: ALICE })).toMatchObject({ commonMessages: secret.length });
    expect(await c.findPrefix({ modelId: MODEL, configHash, history: newChat, scope: ALICE })).toMatchObject({ commonMessages: 1 });
    await c.close();
  });

  it("a delete in one scope removes that scope's remote copy only: the same key of another scope still resumes elsewhere", async () => {
    const { open } = machines();
    const a = open();
    await commitNamedConversation(sessionOf(a, ALICE), "chat", conversation("alice", 1));
    await commitNamedConversation(sessionOf(a, MALLORY), "chat", conversation("mallory", 2));
    await commitNamedConversation(sessionOf(a), "chat", conversation("shared", 3));
    await a.delete({ kvCacheKey: "chat", scope: ALICE });
    await a.close();
    const b = open();
    expect(await peek(b, ALICE, "chat")).toEqual({ savedCount: 0, primed: true });
    expect(await peek(b, MALLORY, "chat")).toEqual({ savedCount: 5, primed: false });
    expect(await peek(b, undefined, "chat")).toEqual({ savedCount: 7, primed: false });
    await b.close();
  });

  it("Redis holds scope ids, never a scope: key names and records", async () => {
    const { open, keyPrefix } = machines();
    const a = open();
    await commitAutoConversation(sessionOf(a, ALICE), conversation("x", 1));
    await commitNamedConversation(sessionOf(a, ALICE), "chat", conversation("y", 1));
    await a.close();
    const client = await createClient({ url: server.url }).on("error", () => {}).connect();
    try {
      const keys = await client.keys(`${keyPrefix}*`);
      expect(keys.length).toBeGreaterThan(0);
      const dump: string[] = [...keys];
      for (const key of keys) {
        if ((await client.type(key)) === "hash") {
          const fields = await client.hGetAll(key);
          // Records and prefix entries (chunks are the state's own bytes: fake random ones here).
          if (!key.includes(":data:")) dump.push(...Object.entries(fields).flat());
        }
      }
      const text = dump.join("\n");
      expect(text).toContain(scopeIdOf(ALICE));
      expect(text).not.toContain("alice");
    } finally {
      await client.quit();
    }
  });

  it("a record is read only for the scope it names: one of another scope, or with a malformed scope id, is refused", async () => {
    const id = { modelId: MODEL, fingerprint: null, configHash, cacheKey: "chat" };
    const record = {
      format: 1 as const,
      id: { ...id, scopeId: scopeIdOf(ALICE) },
      size: 10,
      xxh64: "0123456789abcdef",
      messageCount: 2,
      tokenCount: null,
      chain: null,
      committedAt: 1,
      generation: 5,
      chunkBytes: 10,
      chunks: 1,
      dataGeneration: 5,
    };
    const text = serializeRecord(record);
    expect(parseRecord(text, { ...id, scopeId: scopeIdOf(ALICE) })).toEqual(record);
    expect(parseRecord(text, { ...id, scopeId: scopeIdOf(MALLORY) })).toHaveProperty("error");
    expect(parseRecord(text, id)).toHaveProperty("error");
    expect(parseRecord(text.replace(scopeIdOf(ALICE), "alice"), { ...id, scopeId: "alice" })).toHaveProperty("error");
    // A shared-space record is written as before scopes: no scope field at all.
    expect(JSON.parse(serializeRecord({ ...record, id }))).not.toHaveProperty("scopeId");
  });
});
