/**
 * Nothing outside the root is ever created or deleted, whatever a caller passes or what
 * was planted inside the root. Each test snapshots a directory *beside* the root and
 * checks it is byte-for-byte the same afterwards.
 */
import { existsSync, promises as fs } from "node:fs";
import path from "node:path";
import { beforeEach, describe, expect, it } from "vitest";
import { generateConfigHash, openKvCacheStore, type KvCacheStore } from "../../src/index.js";
import { countingPrime, customTurn, listTree, writeState } from "../helpers/fake-engine.js";
import { tempDir } from "../helpers/temp-root.js";

const configHash = generateConfigHash("sys");
let base: string;
let root: string;
let outside: string;
let store: KvCacheStore;

async function snapshot(dir: string): Promise<Record<string, string>> {
  const out: Record<string, string> = {};
  for (const rel of await listTree(dir)) {
    out[rel] = rel.endsWith("/") ? "dir" : await fs.readFile(path.join(dir, rel), "utf8");
  }
  return out;
}

beforeEach(async () => {
  base = tempDir();
  root = path.join(base, "root");
  outside = path.join(base, "outside");
  await fs.mkdir(path.join(outside, "m"), { recursive: true });
  await fs.writeFile(path.join(outside, "precious.txt"), "keep me");
  await fs.writeFile(path.join(outside, "m", `${configHash}.bin`), "not a cache of yours");
  store = openKvCacheStore({ root });
});

describe("nothing outside the root is created or deleted", () => {
  it("path-like keys, model ids and config hashes are refused", async () => {
    const before = await snapshot(base);
    const session = store.createSession("m");
    for (const customKey of ["../outside", "..", "/tmp", `..${path.sep}outside`]) {
      await expect(
        session.beginTurn({ kind: "custom", customKey, configHash, primeIfMissing: countingPrime() }),
      ).rejects.toHaveProperty("code");
    }
    expect(() => store.createSession("../outside")).toThrow();
    await expect(
      session.beginTurn({ kind: "custom", customKey: "k", configHash: "../../outside/x", primeIfMissing: countingPrime() }),
    ).rejects.toHaveProperty("argument", "configHash");
    await expect(store.delete({ kvCacheKey: "../outside" })).rejects.toHaveProperty("code");
    expect(await snapshot(base)).toEqual(before);
  });

  it("a symlink planted as a key directory is never written or deleted through", async () => {
    await fs.mkdir(root, { recursive: true });
    await fs.symlink(outside, path.join(root, "planted"));
    const before = await snapshot(outside);
    const session = store.createSession("m");
    await expect(
      session.beginTurn({ kind: "custom", customKey: "planted", configHash, primeIfMissing: countingPrime() }),
    ).rejects.toMatchObject({ code: "UNSAFE_PATH" });
    await store.delete({ kvCacheKey: "planted" });
    await store.delete({ all: true });
    expect(await snapshot(outside)).toEqual(before);
  });

  it("a symlink planted as a model directory is never written through", async () => {
    await fs.mkdir(path.join(root, "key"), { recursive: true });
    await fs.symlink(path.join(outside, "m"), path.join(root, "key", "m"));
    const before = await snapshot(outside);
    const session = store.createSession("m");
    await expect(
      session.beginTurn({ kind: "custom", customKey: "key", configHash, primeIfMissing: countingPrime() }),
    ).rejects.toMatchObject({ code: "UNSAFE_PATH" });
    await store.delete({ kvCacheKey: "key", modelId: "m" });
    await store.delete({ all: true });
    expect(await snapshot(outside)).toEqual(before);
  });

  it("useCache never reads or writes through a symlink planted as a key directory", async () => {
    await fs.mkdir(root, { recursive: true });
    await fs.symlink(outside, path.join(root, "planted"));
    const before = await snapshot(outside);
    await expect(store.useCache(path.join(root, "planted", "m", `${configHash}.bin`), {}, async () => 1)).rejects.toMatchObject({
      code: "UNSAFE_PATH",
    });
    expect(await snapshot(outside)).toEqual(before);
  });

  it("an auto commit target outside the root is refused and the turn stays usable", async () => {
    const session = store.createSession("m");
    const turn = await session.beginTurn({
      kind: "auto",
      configHash,
      history: [{ role: "user", content: "hi" }],
      primeIfMissing: countingPrime(),
    });
    await writeState(turn.savePath);
    const before = await snapshot(base.replace(/$/, "")).then((s) => Object.keys(s).filter((k) => k.startsWith("outside")));
    await expect(
      session.commitTurn(turn, {
        kind: "autoRename",
        targetCachePath: path.join(outside, "auto-0123456789abcdef", "m", `${configHash}.bin`),
        messageCount: 2,
      }),
    ).rejects.toMatchObject({ argument: "targetCachePath" });
    const after = Object.keys(await snapshot(base)).filter((k) => k.startsWith("outside"));
    expect(after).toEqual(before);
    await session.rollback(turn);
  });

  it("delete({ all: true }) removes only kvkeep's files: a foreign file in the root stays, with its directory", async () => {
    const session = store.createSession("m");
    await customTurn(session, "a", configHash, 1);
    await fs.writeFile(path.join(root, "a", "m", "notes.txt"), "user's own file");
    await fs.writeFile(path.join(root, "README"), "also theirs");
    await store.delete({ all: true });
    expect(await fs.readFile(path.join(root, "a", "m", "notes.txt"), "utf8")).toBe("user's own file");
    expect(await fs.readFile(path.join(root, "README"), "utf8")).toBe("also theirs");
    expect(existsSync(path.join(root, "a", "m", `${configHash}.bin`))).toBe(false);
  });
});
