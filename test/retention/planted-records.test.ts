/**
 * Issue 20, item 3: records planted in the shared index log (`<root>/.kvkeep/index.log`,
 * writable by anyone who can write the root) point a sweep at candidates, but never make it
 * evict: the bytes that drive evictions are confirmed on disk, and a removal record never
 * hides a cache that exists.
 */
import { existsSync, promises as fs } from "node:fs";
import path from "node:path";
import { describe, expect, it } from "vitest";
import { scopeIdOf } from "../../src/keys/scope.js";
import { tempDir } from "../helpers/temp-root.js";
import { commitAuto, configHash, MODEL, openStore } from "./helpers.js";

const CACHES = 10;
const SIZE = 4000;

/** A live store with ten real auto caches of SIZE bytes, under a budget they fit in. */
async function liveStore(maxBytes = 1024 * 1024, scope?: string) {
  const root = tempDir();
  const store = openStore(root, { maxBytes, maxIdleMs: 24 * 3600_000, sweepIntervalMs: 3600_000 });
  const session = store.createSession(MODEL, scope === undefined ? {} : { scope });
  const caches: string[] = [];
  for (let i = 0; i < CACHES; i++) caches.push(await commitAuto(session, `c${i}`, SIZE));
  await store.sweep(); // the background one after the first commit, out of the way
  return { root, store, caches };
}

/** Append what an attacker would: whole lines, in the log's own format, by another "writer". */
async function plant(root: string, records: object[]): Promise<void> {
  await fs.appendFile(path.join(root, ".kvkeep", "index.log"), records.map((r) => `${JSON.stringify({ w: "planted", u: Date.now(), ...r })}\n`).join(""));
}

const rel = (root: string, cachePath: string): string => path.relative(root, cachePath).split(path.sep).join("/");

describe("planted index-log records (issue 20, item 3)", () => {
  it("a put declaring 2^50 bytes — for a cache that does not exist, for a real one, for a user's file — evicts nothing", async () => {
    const { root, store, caches } = await liveStore();
    // A user's file at a cache's depth, in the real root.
    const userFile = path.join(root, "Downloads", "isos", "disk-1.bin");
    await fs.mkdir(path.dirname(userFile), { recursive: true });
    await fs.writeFile(userFile, "an ISO image");
    await plant(root, [
      { op: "put", p: `auto-0123456789abcdef/${MODEL}/${configHash}.bin`, b: 2 ** 50 },
      { op: "put", p: rel(root, caches[3]!), b: 2 ** 50 },
      { op: "put", p: "Downloads/isos/disk-1.bin", b: 2 ** 50 },
      { op: "use", p: `auto-fedcba9876543210/${MODEL}/${configHash}.bin`, b: 2 ** 50 },
    ]);
    const result = await store.sweep();
    expect(result.evicted).toEqual([]);
    expect(caches.filter((c) => existsSync(c))).toHaveLength(CACHES);
    expect(await fs.readFile(userFile, "utf8")).toBe("an ISO image");
    // What the store reports is what is on disk.
    expect(await store.usage()).toMatchObject({ count: CACHES, bytes: CACHES * SIZE });
    expect(result.keptBytes).toBe(CACHES * SIZE);
    await store.close();
  });

  it("del records for every cache hide none of them: usage counts them, and a budget sweep still evicts down to the budget", async () => {
    const { root, store, caches } = await liveStore();
    await plant(root, caches.map((c) => ({ op: "del", p: rel(root, c) })));
    expect(await store.usage()).toMatchObject({ count: CACHES, bytes: CACHES * SIZE });
    // Half the budget: half of the caches must go, as if no record had been planted.
    const result = await store.sweep({ maxBytes: (CACHES / 2) * SIZE });
    expect(result.evicted).toHaveLength(CACHES / 2);
    expect(caches.filter((c) => existsSync(c))).toHaveLength(CACHES / 2);
    expect(result.keptBytes).toBe((CACHES / 2) * SIZE);
    await store.close();
  });

  it("a genuine del from another store still removes the entry, and a genuine put of a new cache is counted at its size on disk", async () => {
    const { root, store, caches } = await liveStore();
    const other = openStore(root);
    await other.delete({ kvCacheKey: path.basename(path.dirname(path.dirname(caches[0]!))) });
    await commitAuto(other.createSession(MODEL), "from-the-other-store", 2 * SIZE);
    await other.close();
    expect(await store.usage()).toMatchObject({ count: CACHES, bytes: (CACHES - 1) * SIZE + 2 * SIZE });
    await store.close();
  });

  it("in a scope's space too: records name a scope only by their path, and are checked there — planted puts evict nothing, planted dels hide nothing, a copy in another scope's space is no cache", async () => {
    const [alice, bob] = [scopeIdOf("tenant:alice"), scopeIdOf("tenant:bob")];
    const { root, store, caches } = await liveStore(1024 * 1024, "tenant:alice");
    expect(rel(root, caches[0]!).startsWith(`.scopes/${alice}/`)).toBe(true);
    // Alice's cache copied, file and manifest, into Bob's space: its manifest names Alice's scope.
    const copy = path.join(root, ".scopes", bob, ...rel(root, caches[1]!).split("/").slice(2));
    await fs.mkdir(path.dirname(copy), { recursive: true });
    await fs.copyFile(caches[1]!, copy);
    await fs.copyFile(caches[1]!.replace(/\.bin$/, ".meta.json"), copy.replace(/\.bin$/, ".meta.json"));
    await plant(root, [
      { op: "put", p: rel(root, caches[3]!), b: 2 ** 50 },
      { op: "put", p: `.scopes/${alice}/auto-0123456789abcdef/${MODEL}/${configHash}.bin`, b: 2 ** 50 },
      { op: "put", p: rel(root, copy), b: 2 ** 50 },
      ...caches.slice(5).map((c) => ({ op: "del", p: rel(root, c) })),
    ]);
    expect(await store.usage()).toMatchObject({ count: CACHES, bytes: CACHES * SIZE });
    expect((await store.sweep()).evicted).toEqual([]);
    // A budget sweep evicts Alice's caches down to it, as if nothing had been planted, and not the copy.
    const result = await store.sweep({ maxBytes: (CACHES / 2) * SIZE });
    expect(result.evicted).toHaveLength(CACHES / 2);
    expect(result.evicted.every((e) => e.scopeId === alice)).toBe(true);
    expect(caches.filter((c) => existsSync(c))).toHaveLength(CACHES / 2);
    expect(existsSync(copy)).toBe(true);
    await store.close();
  });
});
