/**
 * The chunk side of chunk GC (ARCHITECTURE.md, "Subsystems": chunk GC): list the chunk files, and delete the ones no
 * manifest references once they are old enough, under the collect gate, in batches. Which
 * chunks are referenced is the caller's (src/retention/chunk-gc.ts walks the manifests).
 *
 * Safety rests on the gate and the mtime (argued in chunk-gc.ts): a chunk is deleted only
 * when it is not in the referenced set AND its mtime, read under the exclusive gate, is
 * before the cutoff (t0 − margin). Dead writers' temps are removed without the gate: their
 * writer is gone (src/durable/temp-owner.ts).
 */
import type { Dirent } from "node:fs";
import { promises as fs } from "node:fs";
import path from "node:path";
import { unlinkIfExists } from "../durable/files.js";
import { deadWritersTemp } from "../durable/temp-owner.js";
import { errnoCode, fsWriteError } from "../errors.js";
import type { ChunkFiles } from "./chunk-files.js";
import { chunkIdOfFileName, chunksDir, FAN_OUT, HEX128, isChunkTempName } from "./paths.js";

/** A chunk file on the disk. */
export interface ListedChunk {
  readonly context: string;
  readonly id: string;
  readonly path: string;
}

export interface ChunkListing {
  readonly chunks: ListedChunk[];
  /** Temps of chunk writers (any liveness). */
  readonly temps: string[];
}

async function entries(dir: string): Promise<Dirent[]> {
  try {
    return await fs.readdir(dir, { withFileTypes: true });
  } catch (error) {
    if (errnoCode(error) === "ENOENT" || errnoCode(error) === "ENOTDIR") return [];
    throw error;
  }
}

/**
 * Every chunk file and chunk temp under `<root>/.kvkeep/chunks`, by name: plain directories
 * only (a symlink is an entry of its own type, never followed), context directories named by
 * a digest, fan-out directories by two hex digits, chunk files whose id starts with their
 * fan-out's. Anything else is not kvkeep's and is not listed.
 */
export async function listChunkFiles(root: string): Promise<ChunkListing> {
  const base = chunksDir(root);
  const listing: ChunkListing = { chunks: [], temps: [] };
  const st = await fs.lstat(base).catch(() => null);
  if (!st?.isDirectory()) return listing;
  for (const contextEntry of await entries(base)) {
    if (!contextEntry.isDirectory() || !HEX128.test(contextEntry.name)) continue;
    const contextDir = path.join(base, contextEntry.name);
    for (const fanEntry of await entries(contextDir)) {
      if (!fanEntry.isDirectory() || !FAN_OUT.test(fanEntry.name)) continue;
      const fanDir = path.join(contextDir, fanEntry.name);
      for (const file of await entries(fanDir)) {
        if (!file.isFile()) continue;
        const id = chunkIdOfFileName(file.name);
        if (id !== null && id.startsWith(fanEntry.name)) listing.chunks.push({ context: contextEntry.name, id, path: path.join(fanDir, file.name) });
        else if (isChunkTempName(file.name) && file.name.startsWith(fanEntry.name)) listing.temps.push(path.join(fanDir, file.name));
      }
    }
  }
  return listing;
}

/** Remove the temps of chunk writers that are dead (never a live writer's). Resolves the count removed. */
export async function removeDeadChunkTemps(temps: readonly string[]): Promise<number> {
  let removed = 0;
  for (const temp of temps) {
    if (!deadWritersTemp(path.basename(temp))) continue;
    if (await unlinkIfExists(temp)) removed++;
  }
  return removed;
}

export interface CollectOptions {
  /** Chunks deleted per hold of the collect gate (commits get in between). Default 256. */
  readonly batch?: number;
  /** Tests: awaited under the exclusive gate right before a chunk is deleted (an oracle checks no manifest names it). */
  readonly beforeDelete?: (chunk: ListedChunk) => Promise<void>;
}

export interface CollectReport {
  /** Chunk files deleted. */
  removedChunks: number;
  /** Their bytes. */
  removedBytes: number;
  /** Unreferenced chunk files kept because they were touched or written at or after the cutoff. */
  keptYoung: number;
  /** Empty fan-out and context directories removed. */
  removedDirs: number;
}

/**
 * Delete every listed chunk `referenced` says no manifest names and whose mtime (read under
 * the exclusive gate) is before `cutoffMs`; then prune the directories left empty, under the
 * gate too (a writer makes its directories and writes into them under the shared gate).
 */
export async function collectUnreferenced(
  files: ChunkFiles,
  listed: readonly ListedChunk[],
  referenced: (context: string, id: string) => boolean,
  cutoffMs: number,
  options: CollectOptions = {},
): Promise<CollectReport> {
  const report: CollectReport = { removedChunks: 0, removedBytes: 0, keptYoung: 0, removedDirs: 0 };
  const candidates = listed.filter((chunk) => !referenced(chunk.context, chunk.id));
  const batch = Math.max(1, options.batch ?? 256);
  const touchedDirs = new Set<string>();
  for (let at = 0; at < candidates.length; at += batch) {
    await files.withCollectGate(async () => {
      for (const chunk of candidates.slice(at, at + batch)) {
        const st = await fs.lstat(chunk.path).catch((error: unknown) => {
          if (errnoCode(error) === "ENOENT") return null;
          throw fsWriteError(`checking the chunk ${chunk.path}`, error);
        });
        if (!st?.isFile()) continue;
        if (st.mtimeMs >= cutoffMs) {
          report.keptYoung++;
          continue;
        }
        await options.beforeDelete?.(chunk);
        if (await unlinkIfExists(chunk.path)) {
          report.removedChunks++;
          report.removedBytes += st.size;
          touchedDirs.add(path.dirname(chunk.path));
        }
      }
    });
  }
  if (touchedDirs.size > 0) {
    await files.withCollectGate(async () => {
      const contexts = new Set<string>();
      for (const dir of touchedDirs) {
        contexts.add(path.dirname(dir));
        if (await rmdirIfEmpty(dir)) report.removedDirs++;
      }
      for (const dir of contexts) if (await rmdirIfEmpty(dir)) report.removedDirs++;
    });
  }
  return report;
}

async function rmdirIfEmpty(dir: string): Promise<boolean> {
  try {
    await fs.rmdir(dir);
    return true;
  } catch {
    return false; // not empty (a temp, a chunk written since), or gone
  }
}
