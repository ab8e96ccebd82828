/**
 * Reading, verifying and installing cache files with their manifests. Every function
 * here runs while the caller holds the cache's lock.
 */
import { promises as fs } from "node:fs";
import path from "node:path";
import { errnoCode, fsWriteError, KvKeepError } from "../errors.js";
import { crashPoint } from "../durable/crash-points.js";
import { statIdentity, unlinkIfExists, writeFileAtomic, writeSynced } from "../durable/files.js";
import { manifestPathOf, tempPathFor } from "../layout/paths.js";
import type { NativeFs } from "../native/index.js";
import {
  type FileIdentity,
  judgeFile,
  type Manifest,
  type ManifestEntry,
  type ManifestExpectation,
  MANIFEST_FORMAT,
  parseManifest,
  serializeManifest,
} from "./format.js";

export type ManifestRead = { manifest: Manifest } | { missing: true } | { error: string };

export async function readManifest(cachePath: string): Promise<ManifestRead> {
  let text: string;
  try {
    text = await fs.readFile(manifestPathOf(cachePath), "utf8");
  } catch (error) {
    if (errnoCode(error) === "ENOENT" || errnoCode(error) === "ENOTDIR") return { missing: true };
    return { error: `manifest unreadable: ${(error as Error).message}` };
  }
  const parsed = parseManifest(text);
  return "error" in parsed ? parsed : { manifest: parsed };
}

export type Verification =
  | { ok: true; entry: ManifestEntry; identity: FileIdentity; manifest: Manifest; by: "identity" | "checksum" }
  | { ok: false; missing: true }
  | { ok: false; missing: false; reason: string };

/**
 * Decide whether the cache file may be handed to the engine: a valid manifest for this
 * model/fingerprint/config/key, and a file that is one of its slots — by identity, or by
 * checksum when `checksum` is asked for or the identity alone cannot tell. A file matching
 * the `pending` slot (a commit cut short after its rename) is promoted to `current` —
 * unless `readOnly`, which leaves the manifest as it is.
 */
export async function verifyCache(
  nfs: NativeFs,
  cachePath: string,
  expect: ManifestExpectation,
  options: { checksum: boolean; readOnly?: boolean },
): Promise<Verification> {
  const identity = await statIdentity(cachePath);
  if (!identity) return { ok: false, missing: true };
  const read = await readManifest(cachePath);
  if ("missing" in read) return { ok: false, missing: false, reason: "cache file has no manifest" };
  if ("error" in read) return { ok: false, missing: false, reason: read.error };
  const { manifest } = read;
  const verdict = judgeFile(manifest, expect, identity);
  if (verdict.verdict === "reject") return { ok: false, missing: false, reason: verdict.reason };

  let entry: ManifestEntry;
  let slot: "current" | "pending";
  let by: "identity" | "checksum" = "identity";
  if (verdict.verdict === "match" && !options.checksum) {
    ({ entry, slot } = verdict);
  } else {
    by = "checksum";
    const candidates = verdict.verdict === "match" ? [{ entry: verdict.entry, slot: verdict.slot }] : verdict.candidates;
    const digest = await nfs.xxh64File(cachePath);
    const hit = candidates.find((c) => c.entry.xxh64 === digest);
    if (!hit) return { ok: false, missing: false, reason: `checksum ${digest} matches no committed state` };
    ({ entry, slot } = hit);
  }
  // Re-anchor the entry to the file as it is now (same bytes, maybe a new inode after a
  // restore) and settle a pending commit, so the next check is a cheap identity match.
  const settled: ManifestEntry = { ...entry, ...identity };
  // `readOnly` (borrowing another conversation's cache): judge, never write.
  if (!options.readOnly && (slot === "pending" || verdict.verdict !== "match")) {
    const next: Manifest = { ...manifest, current: settled, pending: null };
    await writeFileAtomic(nfs, manifestPathOf(cachePath), serializeManifest(next), { syncDir: false });
    return { ok: true, entry: settled, identity, manifest: next, by };
  }
  return { ok: true, entry: settled, identity, manifest, by };
}

export interface InstallParams {
  /** The new state: a temp file beside the target, or the target itself when written in place. */
  source: string;
  target: string;
  header: Omit<Manifest, "current" | "pending" | "format">;
  /** The target's committed entry, kept valid until the new one has replaced it. */
  previous: ManifestEntry | null;
  messageCount: number;
  tokenCount: number | null;
  /** The message-key chain of what the new state holds (prefix reuse), or null when unknown. */
  chain: readonly string[] | null;
  /** Refuse to replace an existing target (auto targets): rejects with TARGET_EXISTS. */
  noReplace: boolean;
}

/**
 * Install a new state as a cache with the commit protocol (ARCHITECTURE.md).
 * Replacing a committed state (`previous` set):
 *   1. fsync the new file; hash it;
 *   2. manifest := { current: previous, pending: new }   (temp, fsync, rename, fsync dir)
 *   3. rename the file over the target; fsync the dir
 *   4. manifest := { current: new, pending: null }        (temp, fsync, rename)
 * A crash after any step leaves the file matching one slot of whichever manifest is on
 * disk: the previous state until step 3 lands, the new one after.
 * A fresh target (no previous state: every prime, every auto-mode commit) has nothing to
 * protect, so: fsync + hash; manifest temp written and fsynced; rename the file; rename
 * the manifest; one fsync of the dir. A crash in between leaves a file without its
 * manifest — never trusted, removed on next use — which loses only the state being committed.
 */
export async function installCache(nfs: NativeFs, params: InstallParams): Promise<ManifestEntry> {
  const { source, target } = params;
  const manifestPath = manifestPathOf(target);
  const inPlace = path.resolve(source) === path.resolve(target);
  const identity = await statIdentity(source);
  if (!identity) {
    throw new KvKeepError("SAVE_MISSING", `the new state at ${source} disappeared before it could be committed.`);
  }
  if (identity.size === 0) throw new KvKeepError("SAVE_EMPTY", `the new state at ${source} is empty (0 bytes).`);
  let entry: ManifestEntry;
  try {
    await nfs.fsyncFile(source);
    await crashPoint("install:after-fsync-state");
    entry = {
      ...identity,
      xxh64: await nfs.xxh64File(source),
      messageCount: params.messageCount,
      tokenCount: params.tokenCount,
      committedAt: Date.now(),
      chain: params.chain,
    };
  } catch (error) {
    throw error instanceof KvKeepError ? error : fsWriteError("syncing the new state", error);
  }
  const header = { format: MANIFEST_FORMAT, ...params.header } as const;
  if (!inPlace && params.previous === null) {
    await installFresh(nfs, params, serializeManifest({ ...header, current: entry, pending: null }));
    return entry;
  }
  if (!inPlace) {
    const previous = params.previous!; // a fresh target took the path above
    await writeFileAtomic(nfs, manifestPath, serializeManifest({ ...header, current: previous, pending: entry }), {
      syncDir: true,
    });
    await crashPoint("install:after-pending-manifest");
    try {
      if (params.noReplace) await nfs.renameNoReplace(source, target);
      else await fs.rename(source, target);
      await nfs.fsyncDir(path.dirname(target));
    } catch (error) {
      // The manifest still has `previous` as current, so the old state stays trusted;
      // drop the pending slot so it cannot match a later file by accident.
      await writeFileAtomic(nfs, manifestPath, serializeManifest({ ...header, current: previous, pending: null }), {
        syncDir: false,
      }).catch(() => unlinkIfExists(manifestPath));
      throw error instanceof KvKeepError ? error : fsWriteError("renaming the new state into place", error);
    }
    await crashPoint("install:after-rename");
  }
  await writeFileAtomic(nfs, manifestPath, serializeManifest({ ...header, current: entry, pending: null }), {
    syncDir: inPlace,
  });
  await crashPoint("install:after-final-manifest");
  return entry;
}

async function installFresh(nfs: NativeFs, params: InstallParams, manifestText: string): Promise<void> {
  const manifestPath = manifestPathOf(params.target);
  const manifestTemp = tempPathFor(manifestPath);
  try {
    await writeSynced(manifestTemp, manifestText);
    if (params.noReplace) await nfs.renameNoReplace(params.source, params.target);
    else await fs.rename(params.source, params.target);
    await crashPoint("install:after-rename");
    await fs.rename(manifestTemp, manifestPath);
    await nfs.fsyncDir(path.dirname(params.target));
  } catch (error) {
    await unlinkIfExists(manifestTemp).catch(() => {});
    throw error instanceof KvKeepError ? error : fsWriteError("installing the new state", error);
  }
  await crashPoint("install:after-final-manifest");
}

/** Remove a cache file and its manifest (file first: a manifest alone is never trusted). */
export async function removeCacheFiles(cachePath: string): Promise<void> {
  await unlinkIfExists(cachePath);
  await unlinkIfExists(manifestPathOf(cachePath));
}

/**
 * When the cache was last used: its manifest's mtime (ms), which every commit rewrites and
 * every load sets (`touchLastUse`). Null when there is no manifest.
 */
export async function readLastUse(cachePath: string): Promise<number | null> {
  try {
    return Math.floor((await fs.stat(manifestPathOf(cachePath))).mtimeMs);
  } catch (error) {
    if (errnoCode(error) === "ENOENT" || errnoCode(error) === "ENOTDIR") return null;
    throw error;
  }
}

/**
 * Record a use of the cache at `ms` as its manifest's mtime, so the last use survives a
 * restart. Metadata only: the manifest's contents and the cache file are untouched.
 */
export async function touchLastUse(cachePath: string, ms: number): Promise<void> {
  const seconds = ms / 1000;
  await fs.utimes(manifestPathOf(cachePath), seconds, seconds);
}
