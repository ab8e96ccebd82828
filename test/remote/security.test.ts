/**
 * Who may see what in the Redis tier, on a real redis-server: ACL users and TLS pass
 * through to node-redis, `keyPrefix` keeps tenants apart (down to delete-everything), and
 * hostile data in Redis is never trusted.
 */
import { execFileSync } from "node:child_process";
import { readFileSync } from "node:fs";
import path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { messageKeyChain } from "../../src/keys/auto-key.js";
import { createRedisTier, type RedisTier } from "../../src/remote/redis/index.js";
import { freePort, type RedisServer, startRedis } from "./helpers/redis-server.js";
import { cacheId, fetchBytes, makeState, reserveAndUpload, TEST_TIMEOUT_MS } from "./helpers/states.js";
import { tempDir } from "../helpers/temp-root.js";

describe("ACL users and tenants", () => {
  let server: RedisServer;
  const tiers: RedisTier[] = [];
  const tier = (options: Parameters<typeof createRedisTier>[0]): RedisTier => {
    const t = createRedisTier({ timeoutMs: TEST_TIMEOUT_MS, ...options });
    tiers.push(t);
    return t;
  };
  beforeAll(async () => {
    server = await startRedis();
    await server.cli("acl", "setuser", "tenant-a", "on", ">secret-a", "~tenant-a:*", "+@all");
    await server.cli("acl", "setuser", "tenant-b", "on", ">secret-b", "~tenant-b:*", "+@all");
  });
  afterAll(async () => {
    for (const t of tiers) await t.close();
    await server?.stop();
  });
  const urlFor = (user: string, password: string): string => `redis://${user}:${password}@127.0.0.1:${server.port}`;

  it("works as an ACL user limited to its own key prefix", async () => {
    const dir = tempDir();
    const a = tier({ url: urlFor("tenant-a", "secret-a"), keyPrefix: "tenant-a:" });
    const file = await makeState(dir, cacheId("acl"), 100_000);
    expect((await reserveAndUpload(a, file)).outcome).toBe("published");
    expect((await fetchBytes(a, dir, file.state.id)).bytes!.equals(file.bytes)).toBe(true);
  });

  it("keeps tenants apart: another prefix sees nothing and deleting everything leaves the other tenant whole", async () => {
    const dir = tempDir();
    const a = tier({ url: urlFor("tenant-a", "secret-a"), keyPrefix: "tenant-a:" });
    const b = tier({ url: urlFor("tenant-b", "secret-b"), keyPrefix: "tenant-b:" });
    const file = await makeState(dir, cacheId("shared-name"), 20_000);
    await reserveAndUpload(a, file);
    expect(await fetchBytes(b, dir, file.state.id)).toMatchObject({ hit: false, reason: "absent" });
    expect(await b.remove({ all: true })).toMatchObject({ ok: true });
    expect((await fetchBytes(a, dir, file.state.id)).hit).toBe(true);
  });

  it("a prefix the ACL user may not touch: uploads fail, lookups miss, nothing throws, the breaker stays closed", async () => {
    const dir = tempDir();
    const wrong = tier({ url: urlFor("tenant-a", "secret-a"), keyPrefix: "tenant-b:" });
    const file = await makeState(dir, cacheId("denied"), 1000);
    const reserved = await wrong.reserve(file.state.id);
    expect(reserved.ok).toBe(false);
    expect((await fetchBytes(wrong, dir, file.state.id)).hit).toBe(false);
    expect(wrong.stats()).toMatchObject({ breaker: "closed" });
    expect(wrong.stats().errors).toBeGreaterThan(0);
  });

  it("a wrong password: every call resolves as unavailable", async () => {
    const dir = tempDir();
    const denied = tier({ url: urlFor("tenant-a", "wrong"), keyPrefix: "tenant-a:" });
    const id = cacheId("acl");
    expect(await fetchBytes(denied, dir, id)).toMatchObject({ hit: false, reason: "unavailable" });
    expect(await denied.reserve(id)).toEqual({ ok: false, reason: "unavailable" });
  });

  it("never trusts a prefix index entry that names an unsafe key", async () => {
    const a = tier({ url: server.url, keyPrefix: "hostile:" });
    const scope = { modelId: "tiny", fingerprint: "fp-1", configHash: "cfg0123456789abc" };
    const chain = messageKeyChain([{ role: "system", content: "x" }, { role: "user", content: "y" }]).keys().slice(1);
    await server.cli("hset", a.keys.prefixIndex(scope), chain[1]!, JSON.stringify(["../../etc", "/abs/path", ".kvkeep", 42]));
    expect(await a.lookupPrefix(scope, chain)).toBeNull();
  });
});

describe("TLS", () => {
  let server: RedisServer;
  let ca: Buffer;
  beforeAll(async () => {
    const dir = tempDir();
    execFileSync("openssl", [
      "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=localhost",
      "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost",
      "-keyout", path.join(dir, "key.pem"), "-out", path.join(dir, "cert.pem"), "-days", "1",
    ], { stdio: "ignore" });
    ca = readFileSync(path.join(dir, "cert.pem"));
    const port = await freePort();
    server = await startRedis({
      port: 0,
      args: ["--tls-port", String(port), "--tls-cert-file", path.join(dir, "cert.pem"), "--tls-key-file", path.join(dir, "key.pem"),
        "--tls-ca-cert-file", path.join(dir, "cert.pem"), "--tls-auth-clients", "no"],
    });
    server.port = port;
  });
  afterAll(async () => {
    await server?.stop();
  });

  it("connects over rediss:// with the CA passed through clientOptions", async () => {
    const dir = tempDir();
    const tier = createRedisTier({ url: `rediss://127.0.0.1:${server.port}`, timeoutMs: TEST_TIMEOUT_MS, clientOptions: { socket: { tls: true, ca } } });
    try {
      const file = await makeState(dir, cacheId("tls"), 300_000);
      expect((await reserveAndUpload(tier, file)).outcome).toBe("published");
      expect((await fetchBytes(tier, dir, file.state.id)).bytes!.equals(file.bytes)).toBe(true);
    } finally {
      await tier.close();
    }
  });

  it("refuses a server whose certificate it cannot verify: unavailable, not a crash", async () => {
    const dir = tempDir();
    const tier = createRedisTier({ url: `rediss://127.0.0.1:${server.port}` });
    try {
      expect(await fetchBytes(tier, dir, cacheId("tls"))).toMatchObject({ hit: false, reason: "unavailable" });
    } finally {
      await tier.close();
    }
  });
});

describe("createRedisTier options", () => {
  it.each([
    [{}, "url"],
    [{ url: "redis://a", client: {} }, "url"],
    [{ url: "http://a" }, "url"],
    [{ url: "redis://a", keyPrefix: "a{b}:" }, "keyPrefix"],
    [{ url: "redis://a", keyPrefix: "a*" }, "keyPrefix"],
    [{ url: "redis://a", chunkBytes: 10 }, "chunkBytes"],
    [{ url: "redis://a", ttlSeconds: 0 }, "ttlSeconds"],
    [{ url: "redis://a", timeoutMs: -1 }, "timeoutMs"],
    [{ client: { not: "a client" } }, "client"],
  ])("refuses %j naming %s", (options, argument) => {
    expect(() => createRedisTier(options as never)).toThrow(expect.objectContaining({ code: "INVALID_ARGUMENT", argument }));
  });
});
