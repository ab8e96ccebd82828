/**
 * Which files below a root kvkeep may remove: only those it can prove are its own
 * (ARCHITECTURE.md, "A root knows it is one"). Names prove nothing for caches, manifests and
 * lock files — `Downloads/isos/disk-1.bin`, `games/save/slot_1.bin` and `yarn.lock` fit
 * `<key>/<model>/<hash>.bin|.lock` — so contents decide:
 *
 * - a cache file (`.bin`) is kvkeep's when the manifest beside it is a kvkeep manifest naming
 *   exactly this scope (the `scope` id of a cache under `.scopes/<id>/`, none in the shared
 *   space), key, model and config hash;
 * - a manifest, when it is one (parses, this format) naming exactly its own place;
 * - a lock file, when it belongs to such a cache (`<hash>.lock` beside a proven manifest) and
 *   is a regular empty file (kvkeep's locks never hold a byte) — an empty `x.lock` alone may be
 *   another program's mutex;
 * - a temp, by its name alone (`classifyFileName`: `<hash>.bin|.meta.json.<pid>-<stamp>-….tmp`,
 *   in a model directory) and a dead writer.
 *
 * A bin without a manifest is therefore never removed by recovery, sweeps, deletes or
 * `verify --fix` — also one a crash left between a fresh commit's two renames; the next turn
 * on that conversation replaces it (a turn owns the file at the path it names).
 */
import { promises as fs } from "node:fs";
import { errnoCode } from "../errors.js";
import type { CacheLocation } from "../layout/paths.js";
import { loadNativeFs, type NativeFs } from "../native/index.js";
import { type ManifestRead, readManifest } from "./store.js";

/**
 * Whether a read manifest is a kvkeep manifest naming the cache at `loc` — its scope too: a
 * manifest copied into another scope's space (or between a scope's and the shared space)
 * does not name the place it sits in.
 */
export function manifestNames(read: ManifestRead, loc: CacheLocation): boolean {
  if (!("manifest" in read)) return false;
  const { manifest } = read;
  return (
    (manifest.scope ?? null) === loc.scopeId &&
    manifest.cacheKey === loc.cacheKey &&
    manifest.modelId === loc.modelId &&
    manifest.configHash === loc.configHash
  );
}

/** Whether the cache file at `cachePath` (of `loc`) is provably kvkeep's: its manifest names it. */
export async function provenCache(cachePath: string, loc: CacheLocation, fsBackend: Pick<NativeFs, "readFileBounded"> = loadNativeFs()): Promise<boolean> {
  return manifestNames(await readManifest(cachePath, fsBackend), loc);
}

/** Whether the file at `lockPath` can be a kvkeep lock file: regular and empty (lstat: never through a link). */
export async function isOwnLockFile(lockPath: string): Promise<boolean> {
  try {
    const st = await fs.lstat(lockPath);
    return st.isFile() && st.size === 0;
  } catch (error) {
    if (errnoCode(error) === "ENOENT" || errnoCode(error) === "ENOTDIR") return false;
    throw error;
  }
}
