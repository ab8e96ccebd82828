/**
 * What is under a cache root, read without changing anything: no store is opened (opening
 * one runs recovery, which removes files), no lock is taken, no manifest is rewritten.
 */
import { promises as fs } from "node:fs";
import { errnoCode } from "../errors.js";
import { cacheKindOf } from "../keys/safe-key.js";
import { cachePathOf } from "../layout/paths.js";
import { manifestNames } from "../manifest/ownership.js";
import { readLastUse, readManifest } from "../manifest/store.js";
import { type ScannedModelDir, scanRoot } from "../store/scan.js";

export interface CacheRecord {
  /** The scope's id (never the scope itself: kvkeep does not know it), or null for the shared space. */
  scopeId: string | null;
  cacheKey: string;
  modelId: string;
  configHash: string;
  kind: "auto" | "named";
  cachePath: string;
  bytes: number;
  /** Messages the committed state covers; null without a readable manifest. */
  messageCount: number | null;
  /** Last use: the manifest's mtime (set by every load and commit), else the file's. */
  lastUsedMs: number;
  /** Whether a manifest file exists beside it. */
  hasManifest: boolean;
  /**
   * Whether it is provably kvkeep's: its manifest is a kvkeep manifest naming it (a store's
   * retention counts only these, and only these are ever removed).
   */
  owned: boolean;
  /** Why a turn would not trust it, as far as a read-only look can tell; null when it looks fine. */
  problem: string | null;
}

export interface RootContents {
  caches: CacheRecord[];
  /** Temp files of writers (a live turn's save, or a crashed writer's leftover). */
  temps: { count: number; bytes: number };
}

async function sizeOf(filePath: string): Promise<{ bytes: number; mtimeMs: number } | null> {
  try {
    const st = await fs.lstat(filePath);
    return st.isFile() ? { bytes: st.size, mtimeMs: st.mtimeMs } : null;
  } catch (error) {
    if (errnoCode(error) === "ENOENT" || errnoCode(error) === "ENOTDIR") return null;
    throw error;
  }
}

export async function recordsOf(root: string, dir: ScannedModelDir, temps?: RootContents["temps"]): Promise<CacheRecord[]> {
  const caches: CacheRecord[] = [];
  for (const file of dir.files) {
    if (file.kind === "temp" && temps) {
      const st = await sizeOf(file.path);
      if (st) {
        temps.count++;
        temps.bytes += st.bytes;
      }
    }
    if (file.kind !== "cache") continue;
    const loc = { scopeId: dir.scopeId, cacheKey: dir.cacheKey, modelId: dir.modelId, configHash: file.configHash! };
    const cachePath = cachePathOf(root, loc);
    const st = await sizeOf(cachePath);
    if (!st) continue; // removed since the directory was listed
    const read = await readManifest(cachePath);
    const entry = "manifest" in read ? (read.manifest.current ?? read.manifest.pending) : null;
    caches.push({
      scopeId: dir.scopeId,
      cacheKey: dir.cacheKey,
      modelId: dir.modelId,
      configHash: file.configHash!,
      kind: cacheKindOf(dir.cacheKey),
      cachePath,
      bytes: st.bytes,
      messageCount: entry?.messageCount ?? null,
      hasManifest: !("missing" in read),
      owned: manifestNames(read, loc),
      lastUsedMs: (await readLastUse(cachePath).catch(() => null)) ?? st.mtimeMs,
      problem:
        "manifest" in read
          ? !manifestNames(read, loc)
            ? "its manifest names another cache"
            : entry
              ? null
              : "manifest has no committed state"
          : "missing" in read
            ? "no manifest"
            : read.error,
    });
  }
  return caches;
}

/** Every cache under the root, in key order, and the temp files beside them. */
export async function readRoot(root: string): Promise<RootContents> {
  const caches: CacheRecord[] = [];
  const temps = { count: 0, bytes: 0 };
  for await (const dir of scanRoot(root)) caches.push(...(await recordsOf(root, dir, temps)));
  return { caches, temps };
}

/** Totals by kind of the caches that are kvkeep's, as `store.usage()` reports them. */
export function totals(caches: readonly CacheRecord[]): { bytes: number; count: number; autoBytes: number; namedBytes: number; autoCount: number; namedCount: number } {
  const sum = { bytes: 0, count: 0, autoBytes: 0, namedBytes: 0, autoCount: 0, namedCount: 0 };
  for (const c of caches) {
    if (!c.owned) continue;
    sum.bytes += c.bytes;
    sum.count++;
    if (c.kind === "auto") {
      sum.autoBytes += c.bytes;
      sum.autoCount++;
    } else {
      sum.namedBytes += c.bytes;
      sum.namedCount++;
    }
  }
  return sum;
}
