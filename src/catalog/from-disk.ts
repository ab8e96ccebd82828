/**
 * What the disk says of the caches under a root: the catalog's entries read from a walk
 * (at open and at each resync) and from one cache (a planted record's confirmation). Only a
 * cache its manifest proves kvkeep's is an entry: retention counts and evicts nothing else.
 */
import { promises as fs } from "node:fs";
import { errnoCode } from "../errors.js";
import { statIdentity } from "../durable/files.js";
import { type FileIdentity, sameIdentity } from "../durable/identity.js";
import { deadWritersTemp } from "../durable/temp-owner.js";
import { type CacheLocation, cachePathOf, manifestPathOf } from "../layout/paths.js";
import { manifestNames } from "../manifest/ownership.js";
import { type ManifestRead, readManifest } from "../manifest/store.js";
import type { NativeFs } from "../native/index.js";
import type { ManifestEntry } from "../manifest/format.js";
import { chunkRefsOf, clampUse, entryFor, type IndexEntry, prefixInfoOf } from "./entry.js";
import type { ScannedModelDir } from "./scan.js";

/** A walk of the root: calls `visit` for every model directory. */
export type Visit = (modelDir: ScannedModelDir) => Promise<void>;

/** Model directories stat-ed at once while the index is built from a walk. */
export const COLLECT_CONCURRENCY = 32;

/** What a walk found: every cache's entry, and the bytes of dead writers' temps it left. */
export interface WalkFindings<T> {
  /** What the walk itself resolved to (recovery's report). */
  result: T;
  entries: Map<string, IndexEntry>;
  staleTempBytes: number;
}

/**
 * Run `walk`, collecting the entries of every model directory it visits; directories are
 * stat-ed a few at a time without holding the walk up. Rejects when the walk or a directory
 * fails (after every started collection settled).
 */
export async function collectFromWalk<T>(root: string, fsBackend: NativeFs, walk: (visit: Visit) => Promise<T>): Promise<WalkFindings<T>> {
  const entries = new Map<string, IndexEntry>();
  const staleTemps = new Map<string, number>();
  const inFlight = new Set<Promise<void>>();
  let failure: { error: unknown } | null = null;
  const visit = async (modelDir: ScannedModelDir): Promise<void> => {
    const pending: Promise<void> = Promise.all([collectModelDir(root, fsBackend, modelDir), staleTempBytesIn(modelDir)]).then(
      ([found, tempBytes]) => {
        for (const [cachePath, entry] of found) entries.set(cachePath, entry);
        if (tempBytes > 0) staleTemps.set(modelDir.dir, tempBytes);
      },
      (error: unknown) => {
        failure ??= { error };
      },
    );
    inFlight.add(pending);
    void pending.finally(() => inFlight.delete(pending));
    if (inFlight.size >= COLLECT_CONCURRENCY) await Promise.race(inFlight);
  };
  try {
    const result = await walk(visit);
    await Promise.all(inFlight);
    if (failure) throw (failure as { error: unknown }).error;
    return { result, entries, staleTempBytes: [...staleTemps.values()].reduce((a, b) => a + b, 0) };
  } catch (error) {
    await Promise.all(inFlight);
    throw error;
  }
}

/**
 * What the disk says of one cache: null when it is not there or not provably kvkeep's (no
 * manifest names it); else bytes from a stat, last use from the manifest's mtime, prefix
 * facts from the manifest slot the file matches.
 */
export async function entryFromDisk(fsBackend: NativeFs, cachePath: string, loc: CacheLocation): Promise<IndexEntry | null> {
  try {
    // lstat: the entries themselves, never what a symlink planted there points to.
    const [bin, manifest, read] = await Promise.all([statIdentity(cachePath), fs.lstat(manifestPathOf(cachePath)), readManifest(cachePath, fsBackend)]);
    // Only a cache its manifest proves kvkeep's is retention's to count or evict.
    if (!bin || !manifest.isFile() || !manifestNames(read, loc)) return null;
    const lastUse = clampUse(Math.floor(manifest.mtimeMs), Date.now());
    const slot = slotOf(read, bin);
    return entryFor(loc, bin.size, lastUse, slot && prefixInfoOf(slot.entry, slot.fingerprint), slot && chunkRefsOf(slot.entry));
  } catch (error) {
    if (errnoCode(error) === "ENOENT" || errnoCode(error) === "ENOTDIR") return null; // removed meanwhile
    throw error;
  }
}

/** The caches of one model directory: every `.bin` with a manifest, as `entryFromDisk` reads it. */
async function collectModelDir(root: string, fsBackend: NativeFs, modelDir: ScannedModelDir): Promise<Array<[string, IndexEntry]>> {
  const names = new Set(modelDir.files.map((f) => f.name));
  const found = await Promise.all(
    modelDir.files
      .filter((f) => f.kind === "cache" && names.has(`${f.configHash}.meta.json`))
      .map(async (f): Promise<[string, IndexEntry] | null> => {
        const loc = { scopeId: modelDir.scopeId, cacheKey: modelDir.cacheKey, modelId: modelDir.modelId, configHash: f.configHash! };
        const cachePath = cachePathOf(root, loc);
        const entry = await entryFromDisk(fsBackend, cachePath, loc);
        return entry ? [cachePath, entry] : null;
      }),
  );
  return found.filter((x): x is [string, IndexEntry] => x !== null);
}

/** Bytes of the temp files in `modelDir` whose writer is dead (recovery's walk removes them; these remained). */
async function staleTempBytesIn(modelDir: ScannedModelDir): Promise<number> {
  let bytes = 0;
  for (const file of modelDir.files) {
    if (file.kind !== "temp" || !deadWritersTemp(file.name)) continue;
    const st = await fs.lstat(file.path).catch(() => null);
    if (st?.isFile()) bytes += st.size;
  }
  return bytes;
}

/** The manifest slot the file on disk is (by identity), with the manifest's fingerprint; or null. */
function slotOf(read: ManifestRead, file: FileIdentity): { entry: ManifestEntry; fingerprint: string | null } | null {
  if (!("manifest" in read)) return null;
  const { manifest } = read;
  const entry = [manifest.current, manifest.pending].find((e) => e !== null && sameIdentity(e, file));
  return entry ? { entry, fingerprint: manifest.fingerprint } : null;
}
