/**
 * Physical-bytes accounting (docs/chunks-format.md) on real files: usage() counts each chunk once
 * however many caches name it (and the figures match the bytes on disk), reports logical
 * bytes and the sharing ratio; the budget sweep plans on physical bytes — evicting one of
 * several conversations sharing a prefix frees its tail and its own chunks only; index-log
 * records carry a cache's chunks to other stores; `kvkeep usage` / `scan` show it.
 */
import { promises as fs, statSync } from "node:fs";
import { describe, expect, it } from "vitest";
import { listChunkFiles } from "../../src/chunkfiles/collect.js";
import { decodeLines, encodeRecord } from "../../src/catalog/log-record.js";
import { openKvCacheStore } from "../../src/index.js";
import type { Logger } from "../../src/logger.js";
import { kvkeep } from "../cli/helpers.js";
import { tempDir } from "../helpers/temp-root.js";
import { type Conversation, conversation } from "./conversation.js";
import { plantChunkedCache } from "./plant.js";

const quiet: Logger = { debug() {}, info() {}, warn() {}, error() {} };

async function chunkFilesBytes(root: string): Promise<{ count: number; bytes: number }> {
  const { chunks } = await listChunkFiles(root);
  return { count: chunks.length, bytes: chunks.reduce((n, c) => n + statSync(c.path).size, 0) };
}

/** Three conversations sharing their first 8 chunks, each with 2 chunks of its own and a tail. */
function threeSharing(): Conversation[] {
  return [1, 2, 3].map((salt) => conversation(16 * 10 + salt, { salt, saltFrom: 16 * 8 }));
}

describe("usage() counts physical bytes", () => {
  it("counts a shared chunk once: physical < logical, sharing > 1, and the figures are the bytes on disk", async () => {
    const root = tempDir();
    await openKvCacheStore({ root, logger: quiet }).close();
    const convs = threeSharing();
    const tails: number[] = [];
    for (const [i, c] of convs.entries()) tails.push(statSync((await plantChunkedCache(root, { cacheKey: `chat${i}` }, c)).cachePath).size);
    const chunkBytes = convs[0]!.chunks[0]!.byteLength;

    const store = openKvCacheStore({ root, logger: quiet });
    try {
      const usage = await store.usage();
      const onDisk = await chunkFilesBytes(root);
      const tailBytes = tails.reduce((a, b) => a + b, 0);
      expect(usage.chunkCount).toBe(8 + 3 * 2);
      expect(usage.chunkCount).toBe(onDisk.count);
      expect(usage.chunkBytes).toBe(onDisk.bytes);
      expect(usage.chunkBytes).toBe(14 * chunkBytes);
      expect(usage.namedBytes).toBe(tailBytes);
      expect(usage.bytes).toBe(tailBytes + onDisk.bytes);
      expect(usage.logicalBytes).toBe(tailBytes + 3 * 10 * chunkBytes);
      expect(usage.bytes).toBeLessThan(usage.logicalBytes);
      expect(usage.sharing).toBeCloseTo(usage.logicalBytes / usage.bytes, 10);
      console.log(`3 chats sharing 8 of 10 chunks: physical ${usage.bytes} B, logical ${usage.logicalBytes} B, sharing ${usage.sharing.toFixed(2)}×`);

      // Deleting one leaves its shared chunks counted for the others; its own go from the figures at once.
      await store.delete({ kvCacheKey: "chat0" });
      const after = await store.usage();
      expect(after.chunkCount).toBe(8 + 2 * 2);
      expect(after.bytes).toBe(tails[1]! + tails[2]! + 12 * chunkBytes);
    } finally {
      await store.close();
    }
  });

  it("a budget sweep evicts by physical bytes: evicting the oldest of three sharing a prefix frees its tail and its two chunks, so one eviction meets the budget", async () => {
    const root = tempDir();
    await openKvCacheStore({ root, logger: quiet }).close();
    const convs = threeSharing();
    const planted = [];
    for (const [i, c] of convs.entries()) planted.push(await plantChunkedCache(root, { cacheKey: `chat${i}` }, c));
    // Last uses: chat0 oldest (a manifest's mtime is its cache's last use).
    for (const [i, p] of planted.entries()) {
      const at = new Date(Date.now() - (10 - i) * 60_000);
      await fs.utimes(p.cachePath.replace(/\.bin$/, ".meta.json"), at, at);
    }
    const past = new Date(Date.now() - 3_600_000);
    for (const chunk of (await listChunkFiles(root)).chunks) await fs.utimes(chunk.path, past, past);
    const chunkBytes = convs[0]!.chunks[0]!.byteLength;
    const tail0 = statSync(planted[0]!.cachePath).size;

    const store = openKvCacheStore({ root, logger: quiet, evictNamed: true });
    try {
      const before = await store.usage();
      // A budget one cache's own bytes below what is stored: tails-only accounting would see
      // room (evict none), per-cache logical sizes would evict two.
      const maxBytes = before.bytes - (tail0 + 2 * chunkBytes);
      const swept = await store.sweep({ maxBytes });
      expect(swept.evicted.map((e) => e.cacheKey)).toEqual(["chat0"]);
      expect(swept.keptBytes).toBe(maxBytes);
      expect(swept.removedChunks).toBe(2);
      expect(swept.removedChunkBytes).toBe(2 * chunkBytes);
      const after = await store.usage();
      expect(after.bytes).toBe(maxBytes);
      expect((await chunkFilesBytes(root)).bytes).toBe(after.chunkBytes);
    } finally {
      await store.close();
    }
  });

  it("another store on the root counts the chunks of a chunked cache another store committed (its log record, checked on disk)", async () => {
    const root = tempDir();
    const reader = openKvCacheStore({ root, logger: quiet });
    const writer = openKvCacheStore({ root, logger: quiet });
    try {
      await reader.usage();
      const [a, b] = threeSharing();
      const { cachePath } = await plantChunkedCache(root, { cacheKey: "a" }, a!);
      const { cachePath: cachePathB } = await plantChunkedCache(root, { cacheKey: "b" }, b!);
      // What a chunked commit tells the catalog (the session's commit hook).
      const entryOf = async (p: string) => JSON.parse(await fs.readFile(p.replace(/\.bin$/, ".meta.json"), "utf8")).current;
      const internal = writer as unknown as { retention: { noteCommitted(p: string, e: unknown, f: null): void; close(): Promise<void> } };
      internal.retention.noteCommitted(cachePath, await entryOf(cachePath), null);
      internal.retention.noteCommitted(cachePathB, await entryOf(cachePathB), null);
      await writer.close(); // flushes its log records
      const usage = await reader.usage();
      expect(usage.count).toBe(2);
      expect(usage.chunkCount).toBe(8 + 2 * 2);
      expect(usage.logicalBytes).toBeGreaterThan(usage.bytes);
    } finally {
      await reader.close();
    }
  });

  it("index-log put records carry chunks (context, ids, chunk bytes) and malformed ones are dropped", () => {
    const good = { op: "put" as const, p: "k/m/c.bin", b: 10, u: 1, w: "x", kc: "a".repeat(32), k: ["b".repeat(32), "c".repeat(32)], cb: 4096 };
    expect(decodeLines(encodeRecord(good)).records).toEqual([good]);
    for (const bad of [{ ...good, k: ["nothex"] }, { ...good, kc: "short" }, { ...good, cb: -1 }, { ...good, cb: undefined }]) {
      expect(decodeLines(encodeRecord(bad as typeof good)).records).toEqual([]);
    }
  });
});

describe("kvkeep usage, scan and gc", () => {
  it("show shared chunks, logical bytes and the sharing ratio, and each cache's layout; gc after rm collects the removed cache's own chunks", async () => {
    const root = tempDir();
    await openKvCacheStore({ root, logger: quiet }).close();
    const convs = threeSharing();
    for (const [i, c] of convs.entries()) await plantChunkedCache(root, { cacheKey: `chat${i}` }, c);
    // The built CLI (npm run build): what a user runs.
    const cli = async (args: string[]) => {
      const run = await kvkeep([...args, "--root", root]);
      expect(run.code, run.stderr).toBe(0);
      return run.stdout;
    };
    const usage = JSON.parse(await cli(["usage", "--json"])) as { bytes: number; logicalBytes: number; sharing: number; chunkCount: number };
    expect(usage.chunkCount).toBe(14);
    expect(usage.sharing).toBeGreaterThan(1);
    expect(await cli(["usage"])).toMatch(/shared chunks\s+14 chunks/);
    const scanJson = JSON.parse(await cli(["scan", "--json"])) as Array<{ layout: string; logicalBytes: number; bytes: number; chunks: { count: number } | null }>;
    expect(scanJson.map((c) => [c.layout, c.chunks?.count])).toEqual([
      ["chunked", 10],
      ["chunked", 10],
      ["chunked", 10],
    ]);
    for (const c of scanJson) expect(c.logicalBytes).toBeGreaterThan(c.bytes);
    const scan = await cli(["scan"]);
    expect(scan).toMatch(/LAYOUT/);
    expect(scan.match(/chunked/g)?.length).toBe(3);
    expect(scan).toMatch(/logical: sharing \d+\.\d\d×/);

    await cli(["rm", "chat0"]);
    const past = new Date(Date.now() - 3_600_000);
    for (const chunk of (await listChunkFiles(root)).chunks) await fs.utimes(chunk.path, past, past);
    const gc = await cli(["gc"]);
    expect(gc).toMatch(/2 unreferenced chunks/);
    expect((await listChunkFiles(root)).chunks.length).toBe(12);
  });
});
