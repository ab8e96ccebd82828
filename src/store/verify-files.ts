/**
 * `kvkeep verify`'s check of one cache, without opening a store: the file against a committed
 * state of its manifest, checksum included, under the cache's lock (taken without waiting);
 * with `fix`, a damaged cache is removed with its manifest, lock file and emptied directories.
 * Only a cache a kvkeep manifest names is checked or removed.
 */
import { promises as fs } from "node:fs";
import path from "node:path";
import { pruneEmptyDirs, statIdentity } from "../durable/files.js";
import { lockPathOf } from "../layout/paths.js";
import { processLocks } from "../locks/path-locks.js";
import { judgeFile } from "../manifest/format.js";
import { manifestNames } from "../manifest/ownership.js";
import { readManifest, removeCacheFiles } from "../manifest/store.js";
import { loadNativeFs, type NativeFs } from "../native/index.js";
import type { CacheRecord } from "./inspect.js";

/** `foreign`: a `.bin` no kvkeep manifest names — not kvkeep's, never removed, not a failure. */
export type VerifyStatus = "ok" | "bad" | "removed" | "busy" | "error" | "foreign";

/** What verifying one cache found (and, with `fix`, did). */
export interface CacheVerdict {
  status: VerifyStatus;
  reason?: string;
  /** Files `fix` removed for this cache: its file, manifest and lock file. */
  removedFiles?: number;
}

/**
 * Does the file match a committed state of its manifest, checksum included? Read-only on
 * purpose: a turn's check re-anchors a copied or restored file's manifest to its new
 * identity, but rewriting every manifest here would reset every cache's last use (the
 * manifest's mtime) — and fail on a read-only root. The first turn re-anchors instead.
 */
async function checkCache(fsBackend: NativeFs, cache: CacheRecord): Promise<{ ok: true } | { ok: false; reason: string }> {
  const identity = await statIdentity(cache.cachePath);
  if (!identity) return { ok: false, reason: "file vanished" };
  const read = await readManifest(cache.cachePath);
  if ("missing" in read) return { ok: false, reason: "cache file has no manifest" };
  if ("error" in read) return { ok: false, reason: read.error };
  const expect = {
    ...(cache.scopeId !== null ? { scope: cache.scopeId } : {}),
    modelId: cache.modelId,
    configHash: cache.configHash,
    cacheKey: cache.cacheKey,
    fingerprint: read.manifest.fingerprint,
  };
  const verdict = judgeFile(read.manifest, expect, identity);
  if (verdict.verdict === "reject") return { ok: false, reason: verdict.reason };
  const candidates = verdict.verdict === "match" ? [verdict.entry] : verdict.candidates.map((c) => c.entry);
  const digest = await fsBackend.xxh64File(cache.cachePath);
  if (!candidates.some((entry) => entry.xxh64 === digest)) return { ok: false, reason: `checksum ${digest} matches no committed state` };
  return { ok: true };
}

const message = (error: unknown): string => (error instanceof Error ? error.message : String(error));

/**
 * One cache under its lock (taken without waiting); never throws: a failure is that cache's
 * `error`. A file no kvkeep manifest names is not a cache: it is reported `foreign` before any
 * lock is taken (a lock file would be created beside it) and never removed.
 */
export async function verifyCacheFiles(root: string, cache: CacheRecord, options: { fix: boolean; readOnly: boolean }, fsBackend: NativeFs = loadNativeFs()): Promise<CacheVerdict> {
  const { fix, readOnly } = options;
  const read = await readManifest(cache.cachePath, fsBackend).catch((error: unknown) => ({ error: message(error) }));
  if (!manifestNames(read, cache)) {
    const why = "missing" in read ? "no manifest" : "error" in read ? read.error : "its manifest names another cache";
    return { status: "foreign", reason: `${why}: not kvkeep's, left alone` };
  }
  let lease;
  try {
    lease = processLocks().tryAcquire(cache.cachePath);
    if (!lease) return { status: "busy", reason: "a turn holds it" };
  } catch (error) {
    // On a read-only file system no lock file can be opened for writing, and no process
    // can change the cache either: check it unlocked. Anything else is this cache's error
    // (e.g. its lock path is a directory), not the whole run's.
    if (!readOnly) return { status: "error", reason: `cannot take its lock: ${message(error)}` };
    lease = null;
  }
  let removed: { reason: string; files: number } | null = null;
  try {
    const verdict = await checkCache(fsBackend, cache);
    if (verdict.ok) return { status: "ok" };
    if (!fix || readOnly) return { status: "bad", reason: verdict.reason };
    removed = { reason: verdict.reason, files: await removeCacheFiles(cache.cachePath) };
  } catch (error) {
    return { status: "error", reason: message(error) };
  } finally {
    lease?.release({ removeLockFile: removed !== null });
  }
  if (!(await fs.lstat(lockPathOf(cache.cachePath)).catch(() => null))) removed.files++;
  await pruneEmptyDirs(root, path.dirname(cache.cachePath), () => false);
  return { status: "removed", reason: removed.reason, removedFiles: removed.files };
}
