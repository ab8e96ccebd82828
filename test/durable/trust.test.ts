/**
 * Trust on load: a cache reaches the engine only with a valid manifest for this model,
 * and a file that is the one the manifest describes. Every other file is a miss: removed,
 * re-primed, and the logger says why. Plus what survives a restart, and the rollback policy.
 */
import { existsSync, promises as fs } from "node:fs";
import path from "node:path";
import { describe, expect, it } from "vitest";
import { generateConfigHash, openKvCacheStore, type KvCacheStoreOptions, type Logger } from "../../src/index.js";
import { KvCacheStoreImpl } from "../../src/facade/kvkeep-store.js";
import { countingPrime, customTurn, listTree, writeState } from "../helpers/fake-engine.js";
import { tempDir } from "../helpers/temp-root.js";

const configHash = generateConfigHash("sys");
const MODEL = "m";

function recordingLogger(): Logger & { lines: string[] } {
  const lines: string[] = [];
  const push = (level: string) => (message: string) => lines.push(`${level} ${message}`);
  return { lines, debug: push("debug"), info: push("info"), warn: push("warn"), error: push("error") };
}

/** Commit one state under a first store, then hand the root to a second ("restarted") store. */
async function committedThenRestart(options: KvCacheStoreOptions = {}, fingerprint = "fp-a") {
  const root = tempDir();
  const first = openKvCacheStore({ root });
  const turn = await customTurn(first.createSession(MODEL, { fingerprint }), "conv", configHash, 5);
  await first.close();
  const logger = recordingLogger();
  const second = openKvCacheStore({ root, logger, ...options });
  return { root, cachePath: turn.cachePath, manifestPath: turn.cachePath.replace(/\.bin$/, ".meta.json"), second, logger };
}

async function beginAfterRestart(store: ReturnType<typeof openKvCacheStore>, fingerprint = "fp-a") {
  const prime = countingPrime();
  const session = store.createSession(MODEL, { fingerprint });
  const turn = await session.beginTurn({
    kind: "custom",
    customKey: "conv",
    configHash,
    primeIfMissing: prime,
  });
  return { turn, primed: prime.calls.length === 1, session };
}

describe("a restart resumes from the manifest", () => {
  it("a new store on the same root reuses the committed cache with its saved count, without priming", async () => {
    const { second } = await committedThenRestart();
    const { turn, primed } = await beginAfterRestart(second);
    expect(primed).toBe(false);
    expect(turn.savedCount).toBe(5);
    expect(turn.refused).toBeNull();
  });
});

describe("every bad file is a miss: removed, re-primed, logged, and reported as corrupt on the turn", () => {
  const cases: Array<[string, (c: { cachePath: string; manifestPath: string }) => Promise<void>, RegExp, KvCacheStoreOptions?]> = [
    ["a truncated file", async ({ cachePath }) => fs.truncate(cachePath, 100), /matches no committed state/],
    ["a zero-byte file", async ({ cachePath }) => fs.truncate(cachePath, 0), /empty/],
    ["a garbled manifest", async ({ manifestPath }) => fs.writeFile(manifestPath, "{ not json"), /not valid JSON/],
    ["a truncated manifest", async ({ manifestPath }) => {
      const text = await fs.readFile(manifestPath, "utf8");
      await fs.writeFile(manifestPath, text.slice(0, text.length / 2));
    }, /not valid JSON/],
    ["a manifest of another format", async ({ manifestPath }) => {
      const m = JSON.parse(await fs.readFile(manifestPath, "utf8"));
      await fs.writeFile(manifestPath, JSON.stringify({ ...m, format: 99 }));
    }, /format 99/],
    ["a file without a manifest", async ({ manifestPath }) => fs.unlink(manifestPath), /no manifest/],
    ["same-size garbage written over the file", async ({ cachePath }) => {
      const { size } = await fs.stat(cachePath);
      await fs.writeFile(cachePath, Buffer.alloc(size, 7));
    }, /checksum/],
  ];

  it.each(cases)("%s", async (_name, damage, reason) => {
    const ctx = await committedThenRestart();
    await damage(ctx);
    const { turn, primed, session } = await beginAfterRestart(ctx.second);
    expect(primed).toBe(true);
    expect(turn.savedCount).toBe(0);
    expect(ctx.logger.lines.some((l) => l.startsWith("warn") && reason.test(l)), ctx.logger.lines.join("\n")).toBe(true);
    await session.rollback(turn);
    expect(turn.refused).toEqual({ reason: "corrupt", detail: expect.stringMatching(reason), cachePath: turn.cachePath });
    // Reported once: the next turn finds the fresh prime and refuses nothing.
    expect((await beginAfterRestart(ctx.second)).turn.refused).toBeNull();
  });

  it("a cache from another model fingerprint is never loaded: it is replaced by a fresh prime, and reported as foreign", async () => {
    const ctx = await committedThenRestart();
    const { turn, primed } = await beginAfterRestart(ctx.second, "fp-b");
    expect(primed).toBe(true);
    expect(turn.savedCount).toBe(0);
    expect(ctx.logger.lines.some((l) => /fingerprint differs/.test(l))).toBe(true);
    expect(turn.refused).toEqual({ reason: "foreign", detail: expect.stringMatching(/fingerprint differs/), cachePath: turn.cachePath });
  });

  it("a real cache of another key copied (with its manifest) over this key's is foreign, not loaded", async () => {
    const root = tempDir();
    const store = openKvCacheStore({ root });
    const session = store.createSession(MODEL, { fingerprint: "fp-a" });
    const other = await customTurn(session, "other", configHash, 4);
    const mine = await customTurn(session, "conv", configHash, 2);
    await store.close();
    for (const suffix of [".bin", ".meta.json"]) {
      await fs.copyFile(other.cachePath.replace(/\.bin$/, suffix), mine.cachePath.replace(/\.bin$/, suffix));
    }
    const { turn, primed } = await beginAfterRestart(openKvCacheStore({ root }));
    expect(primed).toBe(true);
    expect(turn.refused).toMatchObject({ reason: "foreign", detail: expect.stringMatching(/another cache key/) });
  });

  it("auto mode reports a refused cache at the lookup key, though the turn primes at another key", async () => {
    const root = tempDir();
    const history = [
      { role: "system", content: "sys" },
      { role: "user", content: "hi" },
    ];
    const first = openKvCacheStore({ root });
    const s1 = first.createSession(MODEL, { fingerprint: "fp-a" });
    const t1 = await s1.beginTurn({ kind: "auto", configHash, history, primeIfMissing: countingPrime() });
    await writeState(t1.savePath);
    const next = [...history, { role: "assistant", content: "hello" }];
    const target = s1.autoCachePath(configHash, next);
    await s1.commitTurn(t1, { kind: "autoRename", targetCachePath: target, messageCount: 3 });
    await first.close();

    const second = openKvCacheStore({ root });
    const turn = await second
      .createSession(MODEL, { fingerprint: "fp-b" })
      .beginTurn({ kind: "auto", configHash, history: [...next, { role: "user", content: "more" }], primeIfMissing: countingPrime() });
    expect(turn.primed).toBe(true);
    expect(turn.cachePath).not.toBe(target);
    expect(turn.refused).toMatchObject({ reason: "foreign", cachePath: target });
    expect(existsSync(target)).toBe(false);
  });

  it("within one store, a session of another fingerprint never takes a cache the store wrote for the first", async () => {
    const store = openKvCacheStore({ root: tempDir() });
    await customTurn(store.createSession(MODEL, { fingerprint: "fp-a" }), "conv", configHash, 5);
    const { turn, primed } = await beginAfterRestart(store, "fp-b");
    expect(primed).toBe(true);
    expect(turn.savedCount).toBe(0);
  });

  it("a session without a fingerprint does not take a fingerprinted cache, nor the reverse", async () => {
    const ctx = await committedThenRestart({}, "fp-a");
    const { primed } = await ctx.second.createSession(MODEL).beginTurn({
      kind: "custom",
      customKey: "conv",
      configHash,
      primeIfMissing: countingPrime(),
    }).then((turn) => ({ primed: turn.primed }));
    expect(primed).toBe(true);
  });

  it("a bit flip that keeps size, inode and mtime passes 'size' verification but not 'checksum'", async () => {
    for (const verify of ["size", "checksum"] as const) {
      const ctx = await committedThenRestart({ verify });
      const handle = await fs.open(ctx.cachePath, "r+");
      // Flip the byte (writing a fixed 0xff was a no-op for 1 random state in 256: a flaky test).
      const { buffer } = await handle.read(Buffer.alloc(1), 0, 1, 10);
      await handle.write(Buffer.from([buffer[0]! ^ 0xff]), 0, 1, 10);
      await handle.close();
      // utimes cannot restore a nanosecond mtime, so pin a whole second on both sides:
      // the identity (size, inode, mtime) then matches the manifest exactly.
      await fs.utimes(ctx.cachePath, 1_700_000_000, 1_700_000_000);
      const manifest = JSON.parse(await fs.readFile(ctx.manifestPath, "utf8"));
      manifest.current.mtimeNs = "1700000000000000000";
      await fs.writeFile(ctx.manifestPath, JSON.stringify(manifest));
      const { turn, primed } = await beginAfterRestart(ctx.second);
      // "size" trusts an unchanged identity by design (cheap); "checksum" reads the file once.
      expect(primed, verify).toBe(verify === "checksum");
      expect(turn.refused?.reason ?? null, verify).toBe(verify === "checksum" ? "corrupt" : null);
    }
  });

  it("with verify: 'checksum' a file is hashed on its first use by a store, not on later turns", async () => {
    const ctx = await committedThenRestart({ verify: "checksum" });
    const session = ctx.second.createSession(MODEL, { fingerprint: "fp-a" });
    for (let i = 0; i < 3; i++) {
      const turn = await session.beginTurn({ kind: "custom", customKey: "conv", configHash, primeIfMissing: countingPrime() });
      await session.rollback(turn);
    }
    const verifications = ctx.logger.lines.filter((l) => l.includes("verified cache"));
    expect(verifications).toHaveLength(1);
    expect(verifications[0]).toContain("by=checksum");
  });
});

describe("a commit cut short after its rename", () => {
  it("is found through the manifest's pending slot and promoted to current", async () => {
    const root = tempDir();
    const store = openKvCacheStore({ root });
    const session = store.createSession(MODEL);
    const turn = await customTurn(session, "conv", configHash, 3);
    // Simulate the crash window: manifest { current: old, pending: new } with the new file in place.
    const manifestPath = turn.cachePath.replace(/\.bin$/, ".meta.json");
    const old = JSON.parse(await fs.readFile(manifestPath, "utf8"));
    await writeState(turn.cachePath, 4321);
    const st = await fs.stat(turn.cachePath, { bigint: true });
    const { createXxh64 } = await import("../../src/keys/hash.js");
    const h = createXxh64();
    h.update(await fs.readFile(turn.cachePath));
    const pending = { ...old.current, size: 4321, ino: st.ino.toString(), mtimeNs: st.mtimeNs.toString(), xxh64: h.digestHex(), messageCount: 5 };
    await fs.writeFile(manifestPath, JSON.stringify({ ...old, pending }));
    const restarted = openKvCacheStore({ root });
    const { turn: resumed, primed } = await (async () => {
      const prime = countingPrime();
      const t = await restarted.createSession(MODEL).beginTurn({ kind: "custom", customKey: "conv", configHash, primeIfMissing: prime });
      return { turn: t, primed: prime.calls.length > 0 };
    })();
    expect(primed).toBe(false);
    expect(resumed.savedCount).toBe(5);
    const promoted = JSON.parse(await fs.readFile(manifestPath, "utf8"));
    expect(promoted.pending).toBeNull();
    expect(promoted.current.messageCount).toBe(5);
  });
});

describe("onRollback: 'keep-committed'", () => {
  it("keeps the last committed state and count when a cancelled turn never touched cachePath", async () => {
    const root = tempDir();
    const store = new KvCacheStoreImpl({ root, onRollback: "keep-committed" });
    const session = store.createSession(MODEL);
    const committed = await customTurn(session, "conv", configHash, 4);
    const bytes = await fs.readFile(committed.cachePath);
    const turn = await session.beginTurn({ kind: "custom", customKey: "conv", configHash, primeIfMissing: countingPrime() });
    await writeState(turn.savePath); // the engine saved, then the user cancelled
    await session.rollback(turn);
    expect(existsSync(turn.savePath)).toBe(false);
    expect(await fs.readFile(turn.cachePath)).toEqual(bytes);
    const next = await session.beginTurn({ kind: "custom", customKey: "conv", configHash, primeIfMissing: countingPrime() });
    expect(next.primed).toBe(false);
    expect(next.savedCount).toBe(4);
    await session.rollback(next);
  });

  it("clears a cache that the cancelled turn rewrote in place (its content no longer matches its count)", async () => {
    const root = tempDir();
    const store = new KvCacheStoreImpl({ root, onRollback: "keep-committed" });
    const session = store.createSession(MODEL);
    await customTurn(session, "conv", configHash, 4);
    const turn = await session.beginTurn({ kind: "custom", customKey: "conv", configHash, primeIfMissing: countingPrime() });
    await writeState(turn.cachePath);
    await session.rollback(turn);
    expect(existsSync(turn.cachePath)).toBe(false);
    expect(store.layers.savedCounts.has(turn.cachePath)).toBe(false);
  });

  it("'clear' removes the committed state on rollback, as the seed contract says", async () => {
    const root = tempDir();
    const store = openKvCacheStore({ root, onRollback: "clear" });
    const session = store.createSession(MODEL);
    await customTurn(session, "conv", configHash, 4);
    const turn = await session.beginTurn({ kind: "custom", customKey: "conv", configHash, primeIfMissing: countingPrime() });
    await session.rollback(turn);
    expect(await listTree(root)).toEqual([]);
  });
});

describe("recovery at open", () => {
  it("removes temp files of dead writers and manifests whose file is gone, and keeps a live writer's temp", async () => {
    const root = tempDir();
    const store = openKvCacheStore({ root });
    const session = store.createSession(MODEL);
    const a = await customTurn(session, "a", configHash, 2);
    const b = await customTurn(session, "b", configHash, 2);
    await store.close();
    const deadPid = 2 ** 22 + 12345; // above pid_max: no such process
    // Named as kvkeep names its temps here: pid, incarnation stamp, unique part.
    const deadTemp = `${a.cachePath}.${deadPid}-0123456789-abc.tmp`;
    const liveTemp = `${a.cachePath}.${process.ppid}-abc.tmp`;
    await fs.writeFile(deadTemp, "torn half-written state");
    await fs.writeFile(liveTemp, "a live writer's save in progress");
    await fs.unlink(b.cachePath);
    const manifestB = b.cachePath.replace(/\.bin$/, ".meta.json");

    const reopened = openKvCacheStore({ root });
    const report = await reopened.ready;
    expect(report).toMatchObject({ removedTemps: 1, removedManifests: 1 });
    expect(existsSync(deadTemp)).toBe(false);
    expect(existsSync(liveTemp)).toBe(true);
    expect(existsSync(manifestB)).toBe(false);
    expect(existsSync(a.cachePath)).toBe(true);
  });

  it("removes a dead writer's temp even beside a cache an open turn holds, and never the turn's own files", async () => {
    const root = tempDir();
    const store = openKvCacheStore({ root });
    const session = store.createSession(MODEL);
    const turn = await session.beginTurn({ kind: "custom", customKey: "held", configHash, primeIfMissing: countingPrime() });
    await writeState(turn.savePath);
    const deadTemp = `${turn.cachePath}.${2 ** 22 + 7}-0123456789-zz.tmp`;
    await fs.writeFile(deadTemp, "x");
    const other = openKvCacheStore({ root });
    expect(await other.ready).toMatchObject({ removedTemps: 1 });
    expect(existsSync(deadTemp)).toBe(false);
    expect(existsSync(turn.savePath)).toBe(true);
    expect(await session.commitTurn(turn, { kind: "static", messageCount: 2 })).toMatchObject({ committed: true });
  });
});
