/**
 * A chunked cache and the Redis tier (until the tier carries chunks, CHUNKS-PLAN §9): its
 * file is only the tail, so it is never uploaded — another machine must not install a tail as
 * a whole state — while a whole-file cache of the same store still is. Real redis-server,
 * two roots for two machines, a real session committing a sequence state (written from the
 * layout table) through the memory handoff.
 */
import { promises as fs } from "node:fs";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { openKvCacheStore } from "../../src/index.js";
import { loadNativeFs } from "../../src/native/index.js";
import { createRedisTier } from "../../src/remote/redis/index.js";
import { buildState } from "../chunks/synthetic-state.js";
import { commitNamedConversation, configHash, MODEL } from "../index/helpers.js";
import { tempDir } from "../helpers/temp-root.js";
import { type RedisServer, startRedis } from "./helpers/redis-server.js";
import { recordingLogger, TEST_TIMEOUT_MS } from "./helpers/states.js";

let server: RedisServer;
beforeAll(async () => {
  server = await startRedis();
});
afterAll(async () => {
  await server?.stop();
});

const state = (tokens: number): Buffer =>
  buildState({ tokenCount: tokens, vTrans: false, layers: [{ kType: 1, kRowBytes: 32, vType: 1, vRowBytes: 32 }] });

describe("chunked caches and the Redis tier", () => {
  it("a chunked commit is not uploaded (its file is a tail); a whole-file commit of the same store is, and the other machine reads only that one", async () => {
    if (loadNativeFs().createMemoryFile() === null) return; // no memfd here: sessions are whole-file only
    const keyPrefix = "kvkeep:chunked-local:";
    const tier = () => createRedisTier({ url: server.url, keyPrefix, chunkBytes: 4096, timeoutMs: TEST_TIMEOUT_MS });
    const logger = recordingLogger();
    const a = openKvCacheStore({ root: tempDir(), logger, remote: tier() });
    const chunked = a.createSession(MODEL, { fingerprint: "fp", chunks: { attentionRotation: "default", sequences: 1, chunkTokens: 16 } });
    expect(chunked.layout).toBe("chunked");
    const turn = await chunked.beginTurn({ kind: "custom", customKey: "chunked", configHash, primeIfMissing: async (p) => fs.writeFile(p, state(0)) });
    await fs.writeFile(turn.savePath, state(100)); // what the engine saves into the memfd
    const outcome = await chunked.commitTurn(turn, { kind: "static", messageCount: 2 });
    expect(outcome).toMatchObject({ committed: true });
    await commitNamedConversation(a.createSession(MODEL, { fingerprint: "fp" }), "whole", [
      { role: "user", content: "hi" },
      { role: "assistant", content: "hello" },
    ]);
    await a.close(); // finishes its uploads

    const b = openKvCacheStore({ root: tempDir(), remote: tier() });
    try {
      const reader = b.createSession(MODEL, { fingerprint: "fp" });
      let primed = 0;
      const prime = async (p: string) => {
        primed++;
        await fs.writeFile(p, state(0));
      };
      const missed = await reader.beginTurn({ kind: "custom", customKey: "chunked", configHash, primeIfMissing: prime });
      expect(primed).toBe(1);
      expect(missed.savedCount).toBe(0);
      await reader.rollback(missed);
      const found = await reader.beginTurn({ kind: "custom", customKey: "whole", configHash, primeIfMissing: prime });
      expect(primed).toBe(1);
      expect(found.savedCount).toBe(2);
      await reader.rollback(found);
    } finally {
      await b.close();
    }
    expect(logger.lines.some((l) => /does not carry chunked caches/.test(l.line))).toBe(true);
  });
});
