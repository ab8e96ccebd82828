/**
 * Chunk GC on a real disk (ARCHITECTURE.md, "Subsystems": chunk GC): a sweep deletes exactly the chunks no manifest
 * names and that nobody touched since its start (minus a 2 s margin); deleting one of two
 * caches sharing a prefix frees only what the other does not name; a manifest GC cannot parse
 * still protects the chunk ids it lists; dead chunk writers' temps go at open; and GC racing
 * two committing processes never leaves a manifest naming a missing chunk.
 */
import { existsSync, promises as fs, readdirSync, writeFileSync } from "node:fs";
import path from "node:path";
import { beforeAll, describe, expect, it } from "vitest";
import { ChunkFiles } from "../../src/chunkfiles/chunk-files.js";
import { listChunkFiles } from "../../src/chunkfiles/collect.js";
import { chunksDir } from "../../src/chunkfiles/paths.js";
import { ownTempPath } from "../../src/durable/temp-owner.js";
import { openKvCacheStore } from "../../src/index.js";
import type { Logger } from "../../src/logger.js";
import { loadNativeFs } from "../../src/native/index.js";
import { collectChunkGarbage, referencedChunks } from "../../src/retention/chunk-gc.js";
import { bundleFixture, runChild } from "../helpers/child.js";
import { tempDir } from "../helpers/temp-root.js";
import { conversation } from "./conversation.js";
import { chunkPath, plantChunkedCache } from "./plant.js";

let worker: string;
beforeAll(async () => {
  worker = await bundleFixture("test/chunkfiles/fixtures/chunk-worker.ts");
});

const quiet: Logger = { debug() {}, info() {}, warn() {}, error() {} };

/** Set every chunk file's mtime an hour back: chunks of conversations committed long ago. */
async function ageChunks(root: string): Promise<void> {
  const past = new Date(Date.now() - 3_600_000);
  for (const chunk of (await listChunkFiles(root)).chunks) await fs.utimes(chunk.path, past, past);
}

describe("chunk GC in a sweep", () => {
  it("deleting one of two caches that share a prefix frees only its own chunks; the other still reads every chunk", async () => {
    const root = tempDir();
    await openKvCacheStore({ root, logger: quiet }).close(); // a kvkeep root
    const a = conversation(16 * 10 + 5);
    const b = conversation(16 * 10 + 7, { salt: 3, saltFrom: 16 * 6 });
    expect(b.ids.slice(0, 6)).toEqual(a.ids.slice(0, 6));
    expect(b.ids.slice(6).some((id) => a.ids.includes(id))).toBe(false);
    await plantChunkedCache(root, { cacheKey: "a" }, a);
    const plantedB = await plantChunkedCache(root, { cacheKey: "b" }, b);
    expect(plantedB.written).toBe(b.chunks.slice(6).reduce((n, c) => n + c.byteLength, 0)); // the shared six were only touched
    await ageChunks(root);

    const store = openKvCacheStore({ root, logger: quiet });
    try {
      await store.delete({ kvCacheKey: "a" });
      const swept = await store.sweep();
      const aOnly = a.chunks.slice(6);
      expect(swept.removedChunks).toBe(aOnly.length);
      expect(swept.removedChunkBytes).toBe(aOnly.reduce((n, c) => n + c.byteLength, 0));
    } finally {
      await store.close();
    }
    for (const id of a.ids.slice(6)) expect(existsSync(chunkPath(root, a.context.digest, id))).toBe(false);
    const files = new ChunkFiles(root, loadNativeFs());
    for (let i = 0; i < b.ids.length; i++) {
      expect(Buffer.compare(await files.readVerified(b.context, b.ids[i]!, i === 0 ? null : b.ids[i - 1]!, b.geometry), b.chunks[i]!)).toBe(0);
    }
  });

  it("keeps an unreferenced chunk written or touched within the margin, collects it once older, and prunes emptied directories", async () => {
    const root = tempDir();
    const c = conversation(20);
    const files = new ChunkFiles(root, loadNativeFs());
    await files.write(c.context.digest, c.ids[0]!, c.chunks[0]!); // a commit that died before its manifest
    const store = openKvCacheStore({ root, logger: quiet });
    try {
      expect((await store.sweep()).removedChunks).toBe(0);
      await ageChunks(root);
      const swept = await store.sweep();
      expect(swept.removedChunks).toBe(1);
      expect(swept.removedFiles).toBeGreaterThanOrEqual(1);
    } finally {
      await store.close();
    }
    expect(readdirSync(chunksDir(root))).toEqual([]);
  });

  it("a manifest it cannot parse (a newer format, a broken entry) still protects every chunk id it lists", async () => {
    const root = tempDir();
    await openKvCacheStore({ root, logger: quiet }).close();
    const c = conversation(16 * 4 + 1);
    const { cachePath } = await plantChunkedCache(root, { cacheKey: "newer" }, c);
    const manifestPath = cachePath.replace(/\.bin$/, ".meta.json");
    const manifest = JSON.parse(await fs.readFile(manifestPath, "utf8")) as Record<string, unknown>;
    writeFileSync(manifestPath, JSON.stringify({ ...manifest, format: 99, current: { ...(manifest.current as object), size: "big", somethingNew: [1] } }));
    await ageChunks(root);
    const report = await collectChunkGarbage({ root, fsBackend: loadNativeFs(), chunkFiles: new ChunkFiles(root, loadNativeFs()), logger: quiet });
    expect(report).toMatchObject({ listed: c.ids.length, referenced: c.ids.length, removedChunks: 0 });
  });

  it("removes a dead chunk writer's temp at open and leaves a live writer's", async () => {
    const root = tempDir();
    const run = runChild(worker, ["write", root, "40", "0", "1"], { KVKEEP_TEST_CRASH_AT: "chunk:after-temp-synced" });
    expect(await run.exited).toBe("SIGKILL");
    expect((await listChunkFiles(root)).temps.length).toBe(1);
    const c = conversation(40);
    const live = ownTempPath(chunkPath(root, c.context.digest, c.ids[1]!));
    await fs.mkdir(path.dirname(live), { recursive: true });
    writeFileSync(live, "being written");
    const store = openKvCacheStore({ root, logger: quiet });
    try {
      expect((await store.ready).removedTemps).toBe(1);
    } finally {
      await store.close();
    }
    expect((await listChunkFiles(root)).temps).toEqual([live]);
  });
});

describe("chunk GC racing commits in other processes", () => {
  it("never leaves a manifest naming a missing chunk while two processes commit shared chunks and GC loops", async () => {
    const root = tempDir();
    const fsBackend = loadNativeFs();
    const files = new ChunkFiles(root, fsBackend);
    const committers = [runChild(worker, ["commit-loop", root, "5000"]), runChild(worker, ["commit-loop", root, "5000"])];
    let running = true;
    const exited = Promise.all(committers.map((c) => c.exited)).finally(() => (running = false));
    const violations: string[] = [];
    let checks = 0;
    let collections = 0;
    let removed = 0;
    let full = 0;

    /** Under the commit gate (no GC deletes meanwhile): every chunk a manifest names is on the disk. */
    const check = async (): Promise<void> => {
      await files.withCommitGate(async () => {
        for (const key of await referencedChunks(root, fsBackend)) {
          const [context, id] = key.split("/") as [string, string];
          if (!existsSync(chunkPath(root, context, id))) violations.push(key);
        }
      });
      checks++;
    };
    const gcLoop = (async () => {
      while (running) {
        const report = await collectChunkGarbage(
          { root, fsBackend, chunkFiles: files, logger: quiet },
          // A commit gets to run between t0 and the walk, and between small batches.
          {
            batch: 4,
            afterStart: () => new Promise((r) => setTimeout(r, Math.random() * 30)),
            // The oracle, under the exclusive gate (no commit is half-way): no manifest on disk names what GC deletes.
            beforeDelete: async (chunk) => {
              if ((await referencedChunks(root, fsBackend)).has(`${chunk.context}/${chunk.id}`)) violations.push(`deleted while named: ${chunk.id}`);
            },
          },
        );
        collections++;
        if (report.listed > 0) full++;
        removed += report.removedChunks;
        await new Promise((r) => setTimeout(r, 5));
      }
    })();
    const checkLoop = (async () => {
      while (running) {
        await check();
        await new Promise((r) => setTimeout(r, 20));
      }
    })();
    const codes = await exited;
    await Promise.all([gcLoop, checkLoop]);
    expect(codes, committers.map((c) => c.stderr()).join("\n")).toEqual([0, 0]);
    await check();
    expect(violations).toEqual([]);
    const commits = committers.map((c) => (JSON.parse(c.stdout().trim().split("\n").pop()!) as { commits: number }).commits);
    console.log(`chunk GC race: ${commits.join(" + ")} commits, ${collections} collections (${full} over chunks) removed ${removed} chunks, ${checks} checks`);
    expect(commits.every((n) => n > 10)).toBe(true);
    expect(collections).toBeGreaterThan(2);
    // Conversations 0-2 were retired after 1.2 s: GC collected their private chunks during the race.
    expect(removed).toBeGreaterThan(0);

    // Afterwards, with everything old, a GC leaves exactly the chunks the last manifests name.
    await ageChunks(root);
    await collectChunkGarbage({ root, fsBackend, chunkFiles: files, logger: quiet });
    const referenced = await referencedChunks(root, fsBackend);
    const onDisk = (await listChunkFiles(root)).chunks.map((c) => `${c.context}/${c.id}`);
    expect(new Set(onDisk)).toEqual(referenced);
  }, 60_000);
});
