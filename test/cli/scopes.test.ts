/**
 * The CLI on a root with isolation scopes (the real built binary): scan shows whose a cache is
 * by the scope's id only, --scope/--scope-id narrow scan and rm to one scope, and a key of one
 * scope is removed without touching the same key in another scope or the shared space.
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { openKvCacheStore } from "../../src/index.js";
import { scopeIdOf } from "../../src/keys/scope.js";
import { createRedisTier } from "../../src/remote/redis/index.js";
import { customTurn } from "../helpers/fake-engine.js";
import { tempDir } from "../helpers/temp-root.js";
import { type RedisServer, startRedis } from "../remote/helpers/redis-server.js";
import { TEST_TIMEOUT_MS } from "../remote/helpers/states.js";
import { CONFIG, json, jsonError, kvkeep } from "./helpers.js";

let redis: RedisServer;
beforeAll(async () => {
  redis = await startRedis();
});
afterAll(async () => {
  await redis?.stop();
});

const ALICE = "tenant:alice";
const BOB = "tenant:bob";

/** "chat" in the shared space, in Alice's scope and in Bob's; "notes" in Alice's only. */
async function scopedRoot(): Promise<string> {
  const root = tempDir("kvkeep-cli-");
  const store = openKvCacheStore({ root });
  await customTurn(store.createSession("qwen"), "chat", CONFIG, 2);
  await customTurn(store.createSession("qwen", { scope: ALICE }), "chat", CONFIG, 4);
  await customTurn(store.createSession("qwen", { scope: ALICE }), "notes", CONFIG, 6);
  await customTurn(store.createSession("qwen", { scope: BOB }), "chat", CONFIG, 8);
  await store.close();
  return root;
}

type Listed = { scopeId: string | null; cacheKey: string; messageCount: number };
const rows = (list: Listed[]): string[] => list.map((c) => `${c.scopeId ?? "-"} ${c.cacheKey} ${c.messageCount}`).sort();

describe("kvkeep on a root with scopes", () => {
  it("scan lists every scope's caches with a SCOPE column of ids (never the scopes), and --scope / --scope-id narrow it", async () => {
    const root = await scopedRoot();
    const [alice, bob] = [scopeIdOf(ALICE), scopeIdOf(BOB)];
    const all = json<Listed[]>(await kvkeep(["scan", "--root", root, "--json"]));
    expect(rows(all)).toEqual([`- chat 2`, `${alice} chat 4`, `${alice} notes 6`, `${bob} chat 8`].sort());
    const text = await kvkeep(["scan", "--root", root]);
    expect(text.stdout.split("\n")[0]).toMatch(/^KEY\s+SCOPE\s+MODEL/);
    expect(text.stdout).toContain(alice);
    expect(text.stdout).not.toContain("tenant");
    expect(rows(json<Listed[]>(await kvkeep(["scan", "--root", root, "--json", "--scope", ALICE])))).toEqual([`${alice} chat 4`, `${alice} notes 6`]);
    expect(rows(json<Listed[]>(await kvkeep(["scan", "--root", root, "--json", "--scope-id", bob])))).toEqual([`${bob} chat 8`]);
    const bad = await kvkeep(["scan", "--root", root, "--json", "--scope-id", "alice"]);
    expect([bad.code, jsonError(bad).code]).toEqual([2, "USAGE"]);
  });

  it("rm <key> --scope removes that scope's key only; rm <key> the shared space's; the others stay", async () => {
    const root = await scopedRoot();
    const [alice, bob] = [scopeIdOf(ALICE), scopeIdOf(BOB)];
    const removed = await kvkeep(["rm", "chat", "--scope", ALICE, "--root", root, "--json"]);
    expect(removed.code).toBe(0);
    expect(json(removed).removed).toEqual([expect.objectContaining({ scopeId: alice, cacheKey: "chat", caches: 1 })]);
    expect(rows(json<Listed[]>(await kvkeep(["scan", "--root", root, "--json"])))).toEqual([`- chat 2`, `${alice} notes 6`, `${bob} chat 8`].sort());
    expect((await kvkeep(["rm", "chat", "--root", root])).code).toBe(0);
    expect(rows(json<Listed[]>(await kvkeep(["scan", "--root", root, "--json"])))).toEqual([`${alice} notes 6`, `${bob} chat 8`].sort());
    // Gone from Alice's scope: a key with no caches there is exit 1, naming the scope.
    const again = await kvkeep(["rm", "chat", "--scope-id", alice, "--root", root, "--json"]);
    expect([again.code, jsonError(again).code]).toEqual([1, "NOT_FOUND"]);
    expect(jsonError(again).message).toContain(alice);
    // "notes" lives only in Alice's scope: rm in the shared space finds nothing, removes
    // nothing, and says which scope holds it.
    const elsewhere = await kvkeep(["rm", "notes", "--root", root, "--json"]);
    expect([elsewhere.code, jsonError(elsewhere).code]).toEqual([1, "NOT_FOUND"]);
    expect(jsonError(elsewhere).message).toContain(`--scope-id ${alice}`);
    expect(rows(json<Listed[]>(await kvkeep(["scan", "--root", root, "--json"])))).toEqual([`${alice} notes 6`, `${bob} chat 8`].sort());
    expect((await kvkeep(["rm", "--all", "--scope", ALICE, "--root", root])).code).toBe(2); // --all is every scope's
    const everything = await kvkeep(["rm", "--all", "--yes", "--root", root, "--json"]);
    expect(everything.code).toBe(0);
    expect(json<Listed[]>(await kvkeep(["scan", "--root", root, "--json"]))).toEqual([]);
  });

  it("verify checks scoped caches against their scope, and reports it by id", async () => {
    const root = await scopedRoot();
    const verify = await kvkeep(["verify", "--root", root, "--json"]);
    expect(verify.code).toBe(0);
    const results = json<{ results: Array<{ scopeId: string | null; status: string }> }>(verify).results;
    expect(results.map((r) => [r.scopeId, r.status]).sort()).toEqual(
      [[null, "ok"], [scopeIdOf(ALICE), "ok"], [scopeIdOf(ALICE), "ok"], [scopeIdOf(BOB), "ok"]].sort(),
    );
  });

  it("with --remote: scan shows the tier's scope ids, rm <key> --scope removes that scope's remote copy and leaves the others'", async () => {
    const keyPrefix = "kvkeep:cli-scopes:";
    const tier = () => createRedisTier({ url: redis.url, keyPrefix, chunkBytes: 4096, timeoutMs: TEST_TIMEOUT_MS });
    const root = tempDir("kvkeep-cli-");
    const store = openKvCacheStore({ root, remote: tier() });
    await customTurn(store.createSession("qwen", { scope: ALICE }), "chat", CONFIG, 4);
    await customTurn(store.createSession("qwen", { scope: BOB }), "chat", CONFIG, 8);
    await store.close(); // uploads done
    const remote = ["--remote", redis.url, "--remote-prefix", keyPrefix];
    const listed = json<Listed[]>(await kvkeep(["scan", ...remote, "--json"]));
    expect(rows(listed)).toEqual([`${scopeIdOf(ALICE)} chat 4`, `${scopeIdOf(BOB)} chat 8`]);
    const removed = await kvkeep(["rm", "chat", "--scope", ALICE, "--root", root, ...remote, "--json"]);
    expect(removed.code).toBe(0);
    expect(json(removed).remote.removed).toEqual([expect.objectContaining({ scopeId: scopeIdOf(ALICE), cacheKey: "chat", states: 1 })]);
    expect(rows(json<Listed[]>(await kvkeep(["scan", ...remote, "--json"])))).toEqual([`${scopeIdOf(BOB)} chat 8`]);
    expect(rows(json<Listed[]>(await kvkeep(["scan", "--root", root, "--json"])))).toEqual([`${scopeIdOf(BOB)} chat 8`]);
  });
});
