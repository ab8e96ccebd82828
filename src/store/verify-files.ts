/**
 * `kvkeep verify`'s check of one cache, without opening a store: the file against a committed
 * state of its manifest, checksum included, under the cache's lock (taken without waiting);
 * with `fix`, a damaged cache is removed with its manifest, lock file and emptied directories.
 * Only a cache a kvkeep manifest names is checked or removed.
 *
 * A chunked cache (docs/chunks-format.md) is checked whole: its file (the tail) as above, then
 * every chunk its committed entry names — there, a plain file of the right size, header of
 * its geometry and position, XXH64, and the identity recomputed from the parent id, its
 * tokens and the context (`ChunkFiles.readVerified`). With `fix`, a cache with a bad chunk is
 * removed, and so is a corrupt chunk file itself (under the collect gate: kvkeep's by its
 * place, name and magic), so every other cache naming it fails too and goes in the same run.
 */
import { promises as fs } from "node:fs";
import path from "node:path";
import { ChunkFiles } from "../chunkfiles/chunk-files.js";
import { decodeKvGeometry, readChunkHeader } from "../chunks/state-format.js";
import { isKvKeepError } from "../errors.js";
import { pruneEmptyDirs, statIdentity } from "../durable/files.js";
import { lockPathOf } from "../layout/paths.js";
import { processLocks } from "../locks/path-locks.js";
import { type ChunkedState, judgeFile } from "../manifest/format.js";
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
async function checkCache(fsBackend: NativeFs, cache: CacheRecord, chunks: ChunkCheck): Promise<{ ok: true } | { ok: false; reason: string; badChunk?: { context: string; id: string } }> {
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
  const entry = candidates.find((e) => e.xxh64 === digest);
  if (!entry) return { ok: false, reason: `checksum ${digest} matches no committed state` };
  return entry.chunks ? checkChunks(entry.chunks, chunks) : { ok: true };
}

/** What one verify run knows of chunks: each checked once however many caches name it. */
export interface ChunkCheck {
  readonly files: ChunkFiles;
  /** `<context>/<id>` → null (sound) or why it is not. */
  readonly seen: Map<string, { reason: string; corrupt: boolean } | null>;
}

/** A ChunkCheck for one run over `root`. */
export function chunkCheck(root: string, fsBackend: NativeFs = loadNativeFs()): ChunkCheck {
  return { files: new ChunkFiles(root, fsBackend), seen: new Map() };
}

async function checkChunks(
  chunks: ChunkedState,
  check: ChunkCheck,
): Promise<{ ok: true } | { ok: false; reason: string; badChunk?: { context: string; id: string } }> {
  let geometry;
  try {
    geometry = decodeKvGeometry(Buffer.from(chunks.geometry, "base64"));
  } catch (error) {
    return { ok: false, reason: `its manifest's chunk geometry does not decode: ${message(error)}` };
  }
  const context = { digest: chunks.context, chunkTokens: chunks.chunkTokens };
  for (let i = 0; i < chunks.ids.length; i++) {
    const id = chunks.ids[i]!;
    const key = `${chunks.context}/${id}`;
    let verdict = check.seen.get(key);
    if (verdict === undefined) {
      try {
        const bytes = await check.files.readVerified(context, id, i === 0 ? null : chunks.ids[i - 1]!, geometry);
        const at = readChunkHeader(bytes).firstPosition;
        verdict = at === i * chunks.chunkTokens ? null : { reason: `it starts at token ${at}, not ${i * chunks.chunkTokens}`, corrupt: true };
      } catch (error) {
        if (isKvKeepError(error, "CHUNK_MISSING")) verdict = { reason: "it is missing", corrupt: false };
        else if (isKvKeepError(error, "CHUNK_CORRUPT")) verdict = { reason: error.message, corrupt: true };
        else throw error;
      }
      check.seen.set(key, verdict);
    }
    if (verdict !== null) {
      return {
        ok: false,
        reason: `chunk ${i + 1} of ${chunks.ids.length} (${id}): ${verdict.reason}`,
        ...(verdict.corrupt ? { badChunk: { context: chunks.context, id } } : {}),
      };
    }
  }
  return { ok: true };
}

const message = (error: unknown): string => (error instanceof Error ? error.message : String(error));

/**
 * One cache under its lock (taken without waiting); never throws: a failure is that cache's
 * `error`. A file no kvkeep manifest names is not a cache: it is reported `foreign` before any
 * lock is taken (a lock file would be created beside it) and never removed.
 */
export async function verifyCacheFiles(
  root: string,
  cache: CacheRecord,
  options: { fix: boolean; readOnly: boolean; chunks?: ChunkCheck },
  fsBackend: NativeFs = loadNativeFs(),
): Promise<CacheVerdict> {
  const { fix, readOnly } = options;
  const chunks = options.chunks ?? chunkCheck(root, fsBackend);
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
    const verdict = await checkCache(fsBackend, cache, chunks);
    if (verdict.ok) return { status: "ok" };
    if (!fix || readOnly) return { status: "bad", reason: verdict.reason };
    removed = { reason: verdict.reason, files: await removeCacheFiles(cache.cachePath) };
    const bad = verdict.badChunk;
    if (bad && (await chunks.files.withCollectGate(() => chunks.files.remove(bad.context, bad.id)))) {
      removed.files++;
      // Every other cache naming it now finds it missing, and goes too.
      chunks.seen.set(`${bad.context}/${bad.id}`, { reason: "it was corrupt (removed by this run)", corrupt: false });
    }
  } catch (error) {
    return { status: "error", reason: message(error) };
  } finally {
    lease?.release({ removeLockFile: removed !== null });
  }
  if (!(await fs.lstat(lockPathOf(cache.cachePath)).catch(() => null))) removed.files++;
  await pruneEmptyDirs(root, path.dirname(cache.cachePath), () => false);
  return { status: "removed", reason: removed.reason, removedFiles: removed.files };
}
