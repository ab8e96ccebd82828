/**
 * What durability costs: a kvkeep commit (engine writes savePath; commit fsyncs, hashes,
 * writes the two-slot manifest and renames) against a raw `writeFile + fsync + rename` of
 * the same bytes; and loading a cache through kvkeep's verification against a raw read.
 * Ratios from one run, interleaved repeats, medians.   npx tsx bench/commit.ts
 */
import { randomBytes } from "node:crypto";
import { mkdtempSync, promises as fs, rmSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { generateConfigHash, openKvCacheStore } from "../src/index.js";
import { compare, table } from "./lib.js";

const sizes = (process.env.BENCH_SIZES_MB ?? "1,16,64").split(",").map(Number);
const repeats = Number(process.env.BENCH_REPEATS ?? 7);
const dir = mkdtempSync(path.join(os.tmpdir(), "kvkeep-bench-commit-"));
const configHash = generateConfigHash("bench");
const rows: Array<Record<string, string | number>> = [];

try {
  const store = openKvCacheStore({ root: path.join(dir, "root") });
  console.log(`kvkeep commit/verify benchmark — backend ${store.backend}, ${repeats} interleaved repeats, medians`);
  const session = store.createSession("bench-model");
  for (const mb of sizes) {
    const bytes = randomBytes(mb * 1024 * 1024);
    const prime = (p: string) => fs.writeFile(p, bytes.subarray(0, 1024));
    const rawTarget = path.join(dir, `raw-${mb}.bin`);
    let count = 0;

    const commit = await compare(repeats, {
      raw: async () => {
        const temp = `${rawTarget}.tmp`;
        const handle = await fs.open(temp, "w");
        await handle.writeFile(bytes);
        await handle.sync();
        await handle.close();
        await fs.rename(temp, rawTarget);
      },
      kvkeep: async () => {
        const turn = await session.beginTurn({ kind: "custom", customKey: `c${mb}`, configHash, primeIfMissing: prime });
        await fs.writeFile(turn.savePath, bytes); // what the engine's save does
        await session.commitTurn(turn, { kind: "static", messageCount: ++count });
      },
    });
    rows.push({ op: "commit", MB: mb, "raw ms": commit.raw, "kvkeep ms": commit.kvkeep, ratio: commit.kvkeep / commit.raw });

    const cachePath = session.customCachePath(`c${mb}`, configHash);
    for (const verify of ["size", "checksum"] as const) {
      const load = await compare(repeats, {
        raw: async () => {
          await fs.readFile(cachePath);
        },
        kvkeep: async () => {
          // A fresh store each time: the first use of the file by a store is what verification costs.
          const fresh = openKvCacheStore({ root: path.join(dir, "root"), verify, onRollback: "keep-committed" });
          const s = fresh.createSession("bench-model");
          const turn = await s.beginTurn({ kind: "custom", customKey: `c${mb}`, configHash, primeIfMissing: prime });
          await fs.readFile(turn.cachePath); // what the engine's load does
          await s.rollback(turn);
          await fresh.close();
        },
      });
      rows.push({ op: `load (verify ${verify})`, MB: mb, "raw ms": load.raw, "kvkeep ms": load.kvkeep, ratio: load.kvkeep / load.raw });
    }
  }
  await store.close();
  console.log(table(rows));
  console.log("ratio = kvkeep / raw (1.00 = free). Commit includes the engine's write in both columns.");
} finally {
  rmSync(dir, { recursive: true, force: true });
}
