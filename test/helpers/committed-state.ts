/**
 * The state a committed cache holds, as llama.cpp would load it: the file itself for a whole
 * cache; for a chunked one (its file is only the tail) its chunks and tail joined, the way
 * `session.loadState` joins them. Tests read it to check what a cache holds without going
 * through an engine.
 */
import { statSync } from "node:fs";
import { readFile } from "node:fs/promises";
import path from "node:path";
import { ChunkFiles } from "../../src/chunkfiles/chunk-files.js";
import { joinSeqState, parseSeqState } from "../../src/chunks/state-format.js";
import { manifestPathOf } from "../../src/layout/paths.js";
import { parseManifest, type ManifestEntry } from "../../src/manifest/format.js";
import { loadNativeFs } from "../../src/native/index.js";
import { chunkedSource, piecesToLoad } from "../../src/store/chunked-load.js";
import type { StoreContext } from "../../src/store/context.js";
import type { KvCacheStore } from "../../src/index.js";

/** The model fingerprint a cache's manifest names (what a store must be given to trust it). */
export async function manifestFingerprint(cachePath: string): Promise<string | null> {
  const manifest = parseManifest(await readFile(manifestPathOf(cachePath), "utf8"));
  if ("error" in manifest) throw new Error(`no manifest at ${cachePath}: ${manifest.error}`);
  return manifest.fingerprint;
}

/** The committed manifest entry of a cache (its `current` slot). */
export async function committedEntry(cachePath: string): Promise<ManifestEntry> {
  const manifest = parseManifest(await readFile(manifestPathOf(cachePath), "utf8"));
  if ("error" in manifest || !manifest.current) throw new Error(`no committed manifest at ${cachePath}`);
  return manifest.current;
}

/** Where the root of a cache path is: the directory holding `.kvkeep`. */
function rootOf(cachePath: string): string {
  for (let dir = path.dirname(cachePath); dir !== path.dirname(dir); dir = path.dirname(dir)) {
    try {
      if (statSync(path.join(dir, ".kvkeep")).isDirectory()) return dir;
    } catch {
      // not here
    }
  }
  throw new Error(`no kvkeep root above ${cachePath}`);
}

/** The whole state a committed cache holds (joined from its chunks when it is chunked). */
export async function committedState(cachePath: string, root = rootOf(cachePath)): Promise<Buffer> {
  const entry = await committedEntry(cachePath);
  const file = await readFile(cachePath);
  if (!entry.chunks) return file;
  const ctx = { chunkFiles: new ChunkFiles(root, loadNativeFs()) } as unknown as StoreContext;
  const source = chunkedSource(cachePath, entry.chunks, file);
  // Joined in JavaScript from chunks read one by one: a reference independent of the store's native gather.
  const { keep, last } = await piecesToLoad(ctx, source, undefined);
  const { ids, context: digest, chunkTokens } = entry.chunks;
  const full = await Promise.all(ids.slice(0, keep).map((id, i) => ctx.chunkFiles.readVerified({ digest, chunkTokens }, id, i === 0 ? null : ids[i - 1]!, source.geometry)));
  return joinSeqState({ geometry: source.geometry, pieces: last ? [...full, last] : full, placement: entry.chunks.placement });
}

/** The tokens a committed cache's state holds. */
export async function committedTokens(cachePath: string, root?: string): Promise<number[]> {
  return [...parseSeqState(await committedState(cachePath, root)).tokens];
}

/**
 * The tokens of the state `store` hands an engine for a cache — after its own checks
 * (manifest slots, identity, every chunk) — or null when it trusts nothing there.
 */
export async function loadedTokens(store: KvCacheStore, cachePath: string, fingerprint: string | null): Promise<number[] | null> {
  return store.useCache(cachePath, { fingerprint }, async (cache) => [...parseSeqState(await readFile(cache.loadPath)).tokens]);
}
