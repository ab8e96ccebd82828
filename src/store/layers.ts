/**
 * The in-memory layers of a store, with one owner (the store) and one place that
 * changes them together. Pure bookkeeping: no I/O.
 *
 * - `savedCounts`: cache path → messages the committed state covers (seed layer 2);
 * - `initialized`: (modelId, configHash, cacheKey, scope) whose cache this store primed or
 *   verified (seed layer 3);
 * - `trusted`: cache path → the committed manifest entry of the file this store wrote or
 *   verified, and the model fingerprint it was verified for, so a later turn of the same
 *   model skips re-verification while size, inode and mtime are unchanged;
 * - `activeDirs`: directory → in-flight turns using it, so pruning never removes a
 *   directory a turn is about to write into.
 */
import path from "node:path";
import type { ManifestEntry } from "../manifest/format.js";
import { type CacheLocation, isWithin } from "../layout/paths.js";

export function initKey(loc: CacheLocation): string {
  // NUL cannot occur in any of the four (validated path components; a scope id is hex).
  return `${loc.modelId}\0${loc.configHash}\0${loc.cacheKey}\0${loc.scopeId ?? ""}`;
}

/** A committed entry this store trusts, for sessions of one model fingerprint. */
export type TrustedCache = ManifestEntry & { fingerprint: string | null };

export class StoreLayers {
  readonly savedCounts = new Map<string, number>();
  readonly initialized = new Set<string>();
  readonly trusted = new Map<string, TrustedCache>();
  readonly #activeDirs = new Map<string, number>();

  /** A cache this store now trusts (primed, verified or committed), with its saved count. */
  recordTrusted(cachePath: string, init: string, entry: ManifestEntry, fingerprint: string | null): void {
    this.trusted.set(cachePath, { ...entry, fingerprint });
    this.initialized.add(init);
    this.savedCounts.set(cachePath, entry.messageCount);
  }

  /** Forget every layer of one cache (the file itself is the caller's to remove). */
  forget(cachePath: string, init: string): void {
    this.trusted.delete(cachePath);
    this.initialized.delete(init);
    this.savedCounts.delete(cachePath);
  }

  /** Forget every cache under `dir` and every init flag `matches` selects. */
  forgetUnder(dir: string, matches: (loc: CacheLocation) => boolean): void {
    for (const map of [this.savedCounts, this.trusted]) {
      for (const key of map.keys()) if (isWithin(dir, key)) map.delete(key);
    }
    for (const key of this.initialized) {
      const [modelId, configHash, cacheKey, scope] = key.split("\0") as [string, string, string, string];
      if (matches({ scopeId: scope === "" ? null : scope, modelId, configHash, cacheKey })) this.initialized.delete(key);
    }
  }

  clear(): void {
    this.savedCounts.clear();
    this.initialized.clear();
    this.trusted.clear();
  }

  /** Count a turn's use of the directory holding `cachePath` (and of its key directory). */
  refDir(cachePath: string): void {
    for (const dir of this.#dirsOf(cachePath)) this.#activeDirs.set(dir, (this.#activeDirs.get(dir) ?? 0) + 1);
  }

  unrefDir(cachePath: string): void {
    for (const dir of this.#dirsOf(cachePath)) {
      const n = (this.#activeDirs.get(dir) ?? 0) - 1;
      if (n > 0) this.#activeDirs.set(dir, n);
      else this.#activeDirs.delete(dir);
    }
  }

  isDirActive(dir: string): boolean {
    return this.#activeDirs.has(path.resolve(dir));
  }


  #dirsOf(cachePath: string): string[] {
    const modelDir = path.dirname(path.resolve(cachePath));
    return [modelDir, path.dirname(modelDir)];
  }
}
