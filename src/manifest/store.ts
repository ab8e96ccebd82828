/**
 * Reading, verifying and installing cache files with their manifests. Every function
 * here runs while the caller holds the cache's lock.
 */
import { promises as fs } from "node:fs";
import path from "node:path";
import { errnoCode, fsWriteError, KvKeepError } from "../errors.js";
import { crashPoint } from "../durable/crash-points.js";
import { inspectFile, removeEntry, unlinkIfExists, writeFileAtomic, writeSynced } from "../durable/files.js";
import { manifestPathOf } from "../layout/paths.js";
import { ownTempPath } from "../durable/temp-owner.js";
import { loadNativeFs, type NativeFs } from "../native/index.js";
import type { CacheRefusalReason } from "../types.js";
import { type FileIdentity, sameIdentity } from "../durable/identity.js";
import {
  type ChunkedState,
  judgeFile,
  type Manifest,
  type ManifestEntry,
  type ManifestExpectation,
  MANIFEST_FORMAT,
  MANIFEST_MAX_BYTES,
  parseManifest,
  serializeManifest,
} from "./format.js";

export type ManifestRead = { manifest: Manifest } | { missing: true } | { error: string };

/**
 * Read and parse the manifest of the cache at `cachePath`: opened without following a
 * symlink and without blocking, a regular file of at most MANIFEST_MAX_BYTES — anything
 * else (a symlink, FIFO, device, directory, a huge or sparse file) is an `error`, so the
 * cache is untrusted, within milliseconds.
 */
export async function readManifest(cachePath: string, fsBackend: Pick<NativeFs, "readFileBounded"> = loadNativeFs()): Promise<ManifestRead> {
  let read;
  try {
    read = await fsBackend.readFileBounded(manifestPathOf(cachePath), MANIFEST_MAX_BYTES);
  } catch (error) {
    return { error: `manifest unreadable: ${(error as Error).message}` };
  }
  if (read === null) return { missing: true };
  const parsed = parseManifest(read.data.toString("utf8"));
  return "error" in parsed ? parsed : { manifest: parsed };
}

export type Verification =
  | { ok: true; entry: ManifestEntry; identity: FileIdentity; manifest: Manifest; by: "identity" | "checksum" }
  | { ok: false; missing: true }
  /** `reason` in words; `refusal`: a cache made for something else (`foreign`) or not sound (`corrupt`). */
  | { ok: false; missing: false; reason: string; refusal: CacheRefusalReason };

const corrupt = (reason: string): Verification => ({ ok: false, missing: false, reason, refusal: "corrupt" });

/**
 * Decide whether the cache file may be handed to the engine: a valid manifest for this
 * model/fingerprint/config/key, and a file that is one of its slots — by identity, or by
 * checksum when `checksum` is asked for or the identity alone cannot tell. A file matching
 * the `pending` slot (a commit cut short after its rename) is promoted to `current` —
 * unless `readOnly`, which leaves the manifest as it is.
 */
export async function verifyCache(
  fsBackend: NativeFs,
  cachePath: string,
  expect: ManifestExpectation,
  options: { checksum: boolean; readOnly?: boolean },
): Promise<Verification> {
  const state = await inspectFile(cachePath, fsBackend);
  if (state.kind === "missing") return { ok: false, missing: true };
  if (state.kind === "other") {
    return corrupt(`the cache path is a ${state.type}, not a regular file`);
  }
  const identity = state.identity;
  const read = await readManifest(cachePath, fsBackend);
  if ("missing" in read) return corrupt("cache file has no manifest");
  if ("error" in read) return corrupt(read.error);
  const { manifest } = read;
  const verdict = judgeFile(manifest, expect, identity);
  if (verdict.verdict === "reject") return { ok: false, missing: false, reason: verdict.reason, refusal: verdict.refusal };

  let entry: ManifestEntry;
  let slot: "current" | "pending";
  let by: "identity" | "checksum" = "identity";
  if (verdict.verdict === "match" && !options.checksum) {
    ({ entry, slot } = verdict);
  } else {
    by = "checksum";
    const candidates = verdict.verdict === "match" ? [{ entry: verdict.entry, slot: verdict.slot }] : verdict.candidates;
    const digest = await fsBackend.xxh64File(cachePath);
    const hit = candidates.find((c) => c.entry.xxh64 === digest);
    if (!hit) return corrupt(`checksum ${digest} matches no committed state`);
    // The bytes hashed must be the file judged (the hash opens the path again).
    const after = await inspectFile(cachePath, fsBackend);
    if (after.kind !== "file" || !sameIdentity(after.identity, identity)) {
      return corrupt("the cache file changed while it was verified");
    }
    ({ entry, slot } = hit);
  }
  // Re-anchor the entry to the file as it is now (same bytes, maybe a new inode after a
  // restore) and settle a pending commit, so the next check is a cheap identity match.
  const settled: ManifestEntry = { ...entry, ...identity };
  // `readOnly` (borrowing another conversation's cache): judge, never write.
  if (!options.readOnly && (slot === "pending" || verdict.verdict !== "match")) {
    const next: Manifest = { ...manifest, current: settled, pending: null };
    try {
      await writeFileAtomic(fsBackend, manifestPathOf(cachePath), serializeManifest(next), { syncDir: false });
    } catch {
      // Settling is an optimisation: the manifest as it is still describes this file (the
      // slot just matched), so a full disk must not make a good cache untrusted.
      return { ok: true, entry: settled, identity, manifest, by };
    }
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
  /**
   * The new state's chunks when it is stored chunked (the file at `source` is then its tail
   * chunk; the chunks are on disk before this is called), or null/absent for a whole state.
   */
  chunks?: ChunkedState | null;
  /** Refuse to replace an existing target (auto targets): rejects with TARGET_EXISTS. */
  noReplace: boolean;
}

export interface Installed {
  /** The committed entry of the new state, which is now the cache file. */
  entry: ManifestEntry;
  /**
   * A failure after the new state had taken the cache file's place (its directory fsync,
   * or the final manifest write). The new state is installed and described by the manifest
   * on disk (its `pending` slot until it is settled at its next verification); only this
   * last step's work is missing. Null when every step completed.
   */
  unsettled: KvKeepError | null;
}

const asKvKeepError = (what: string, error: unknown): KvKeepError =>
  error instanceof KvKeepError ? error : fsWriteError(what, error);

/**
 * Install a new state as a cache with the commit protocol (ARCHITECTURE.md).
 * Replacing a committed state (`previous` set):
 *   1. fsync the new file; hash it;
 *   2. manifest := { current: previous, pending: new }   (temp, fsync, rename, fsync dir)
 *   3. rename the file over the target; fsync the dir
 *   4. manifest := { current: new, pending: null }        (temp, fsync, rename)
 * A crash after any step leaves the file matching one slot of whichever manifest is on
 * disk: the previous state until step 3's rename lands, the new one after.
 * Failures obey the same line. Before the rename, the call rejects and the previous state
 * stays the cache (the manifest on disk describes it in either form). From the rename on,
 * the new state *is* the cache and the previous one is gone, so nothing may undo it: a
 * failure of the directory fsync or of step 4 resolves with the failure in `unsettled`
 * (the manifest's `pending` slot describes the new state until it is settled).
 *
 * A fresh target (no previous state: every prime, every auto-mode commit) has nothing to
 * protect, so: fsync + hash; manifest temp written and fsynced; rename the file; rename
 * the manifest; one fsync of the dir. A crash in between leaves a file without its
 * manifest — never trusted, removed on next use — which loses only the state being
 * committed; a failure in between removes the file again and rejects.
 */
export async function installCache(fsBackend: NativeFs, params: InstallParams): Promise<Installed> {
  const { source, target } = params;
  const manifestPath = manifestPathOf(target);
  const inPlace = path.resolve(source) === path.resolve(target);
  const sourceState = await inspectFile(source, fsBackend);
  if (sourceState.kind === "missing") {
    throw new KvKeepError("SAVE_MISSING", `the new state at ${source} disappeared before it could be committed.`);
  }
  if (sourceState.kind === "other") {
    throw new KvKeepError("UNSAFE_PATH", `the new state at ${source} is a ${sourceState.type}, not a regular file; kvkeep never commits through it.`);
  }
  const identity = sourceState.identity;
  if (identity.size === 0) throw new KvKeepError("SAVE_EMPTY", `the new state at ${source} is empty (0 bytes).`);
  let entry: ManifestEntry;
  try {
    await fsBackend.fsyncFile(source);
    entry = {
      ...identity,
      xxh64: await fsBackend.xxh64File(source),
      messageCount: params.messageCount,
      tokenCount: params.tokenCount,
      committedAt: Date.now(),
      chain: params.chain,
      ...(params.chunks ? { chunks: params.chunks } : {}),
    };
    await crashPoint("install:after-fsync-state");
  } catch (error) {
    throw asKvKeepError("syncing the new state", error);
  }
  // Anything but a regular file where the manifest goes (a directory, a symlink, a FIFO)
  // describes nothing and would fail every manifest write: it goes first.
  const manifestState = await inspectFile(manifestPath, fsBackend);
  if (manifestState.kind === "other") await removeEntry(manifestPath);
  const header = { format: MANIFEST_FORMAT, ...params.header } as const;
  const manifestOf = (current: ManifestEntry, pending: ManifestEntry | null): string =>
    serializeManifest({ ...header, current, pending });
  if (inPlace) {
    // The engine already replaced the committed state: there is no previous one to keep.
    try {
      await writeFileAtomic(fsBackend, manifestPath, manifestOf(entry, null), { syncDir: true });
      await crashPoint("install:after-final-manifest");
    } catch (error) {
      throw asKvKeepError("writing the manifest", error);
    }
    return { entry, unsettled: null };
  }
  if (params.previous === null) return installFresh(fsBackend, params, entry, manifestOf(entry, null));

  const previous = params.previous;
  // Before the rename: the previous state is the cache, and stays it on any failure.
  try {
    await writeFileAtomic(fsBackend, manifestPath, manifestOf(previous, entry), { syncDir: true });
    await crashPoint("install:after-pending-manifest");
  } catch (error) {
    throw asKvKeepError("writing the manifest", error);
  }
  try {
    if (params.noReplace) await fsBackend.renameNoReplace(source, target);
    else await fs.rename(source, target);
  } catch (error) {
    // The previous state is still the cache and still `current`. Drop the pending slot so
    // it cannot match a later file by accident; if even that fails, the manifest as it is
    // still describes the cache correctly — never remove it.
    await writeFileAtomic(fsBackend, manifestPath, manifestOf(previous, null), { syncDir: false }).catch(() => {});
    throw asKvKeepError("renaming the new state into place", error);
  }
  // The point of no return: the new state is the cache file and `pending` describes it.
  try {
    await crashPoint("install:after-rename");
    await fsBackend.fsyncDir(path.dirname(target));
    await crashPoint("install:after-rename-synced");
    await writeFileAtomic(fsBackend, manifestPath, manifestOf(entry, null), { syncDir: false });
    await crashPoint("install:after-final-manifest");
  } catch (error) {
    return { entry, unsettled: asKvKeepError("settling the manifest after the new state was installed", error) };
  }
  return { entry, unsettled: null };
}

async function installFresh(fsBackend: NativeFs, params: InstallParams, entry: ManifestEntry, manifestText: string): Promise<Installed> {
  const manifestPath = manifestPathOf(params.target);
  const manifestTemp = ownTempPath(manifestPath);
  let placed = false;
  try {
    await writeSynced(manifestTemp, manifestText);
    await crashPoint("atomic-write:after-temp-synced");
    if (params.noReplace) await fsBackend.renameNoReplace(params.source, params.target);
    else await fs.rename(params.source, params.target);
    placed = true;
    await crashPoint("install:after-rename");
    await fs.rename(manifestTemp, manifestPath);
  } catch (error) {
    await unlinkIfExists(manifestTemp).catch(() => {});
    // A file without its manifest is never trusted: take back what this call placed, so a
    // failed install leaves the target as it found it (absent).
    if (placed) await unlinkIfExists(params.target).catch(() => {});
    throw asKvKeepError("installing the new state", error);
  }
  // Both are in place: the new state is the cache. Only durability can still fail.
  try {
    await crashPoint("atomic-write:after-rename");
    await fsBackend.fsyncDir(path.dirname(params.target));
    await crashPoint("install:after-final-manifest");
  } catch (error) {
    return { entry, unsettled: asKvKeepError("syncing the cache directory after the new state was installed", error) };
  }
  return { entry, unsettled: null };
}

/**
 * Remove a cache file and its manifest (file first: a manifest alone is never trusted) —
 * whatever they are: a symlink is removed itself, a directory planted there with its contents.
 * Resolves to how many of the two were there and are gone.
 */
export async function removeCacheFiles(cachePath: string): Promise<number> {
  const bin = await removeEntry(cachePath);
  const manifest = await removeEntry(manifestPathOf(cachePath));
  return Number(bin) + Number(manifest);
}

/**
 * When the cache was last used: its manifest's mtime (ms), which every commit rewrites and
 * every load sets (`touchLastUse`). Null when there is no manifest.
 */
export async function readLastUse(cachePath: string): Promise<number | null> {
  try {
    return Math.floor((await fs.lstat(manifestPathOf(cachePath))).mtimeMs);
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
  // lutimes: a manifest replaced by a symlink gets the link's times, never its target's.
  await fs.lutimes(manifestPathOf(cachePath), seconds, seconds);
}
