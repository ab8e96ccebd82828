import path from "node:path";
import { pruneEmptyDirs, statIdentity } from "../../durable/files.js";
import { processLocks } from "../../locks/path-locks.js";
import { judgeFile } from "../../manifest/format.js";
import { manifestNames } from "../../manifest/ownership.js";
import { readManifest, removeCacheFiles } from "../../manifest/store.js";
import { lockPathOf } from "../../layout/paths.js";
import { promises as fs } from "node:fs";
import { loadNativeFs, type NativeFs } from "../../native/index.js";
import { type CacheRecord, readRoot } from "../caches.js";
import type { Command } from "../command.js";
import { EXIT_FAILURE } from "../errors.js";
import { formatBytes, formatElapsed, plural, renderTable } from "../format.js";
import { progressBar } from "../progress.js";
import { ADOPT_OPTION, assertKvkeepRoot, checkRoot, checkRootToRead, markAdopted, noRootYet, noteIfNotRoot } from "../root.js";

/** `foreign`: a `.bin` no kvkeep manifest names — not kvkeep's, never removed, not a failure. */
type Status = "ok" | "bad" | "removed" | "busy" | "error" | "foreign";

interface Result {
  /** The cache's scope id, null for the shared space. */
  scopeId: string | null;
  cacheKey: string;
  modelId: string;
  configHash: string;
  cachePath: string;
  bytes: number;
  status: Status;
  reason?: string;
  /** Files --fix removed for this cache: its file, manifest and lock file. */
  removedFiles?: number;
}

/**
 * Does the file match a committed state of its manifest, checksum included? Read-only on
 * purpose: a turn's check re-anchors a copied or restored file's manifest to its new
 * identity, but rewriting every manifest here would reset every cache's last use (the
 * manifest's mtime) — and fail on a read-only root. The first turn re-anchors instead.
 */
async function checkCache(nfs: NativeFs, cache: CacheRecord): Promise<{ ok: true } | { ok: false; reason: string }> {
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
  const digest = await nfs.xxh64File(cache.cachePath);
  if (!candidates.some((entry) => entry.xxh64 === digest)) return { ok: false, reason: `checksum ${digest} matches no committed state` };
  return { ok: true };
}

const message = (error: unknown): string => (error instanceof Error ? error.message : String(error));

export const verifyCommand: Command = {
  name: "verify",
  summary: "checksum every cache against its manifest; --fix removes the damaged ones",
  usage: "kvkeep verify [--fix] [--root DIR] [--json]",
  description:
    "Reads every cache file and compares its XXH64 with the committed state its manifest records (and the model, key and config the manifest names). A cache a turn holds right now — in any process — is reported busy, never waited for. Verify changes nothing unless --fix is given; then it removes each damaged cache with its manifest, lock file and emptied directories, and says how many files it removed. A .bin that no kvkeep manifest names is not a cache: reported foreign, never removed, not a failure. --fix refuses a directory that is not a kvkeep root (no .kvkeep/root.json) unless --adopt. A copied or restored root verifies as it is (its manifests are not rewritten, so last-use times survive). A read-only root is checked without locks. On a terminal a progress bar runs on stderr.",
  options: {
    fix: { type: "boolean", help: "remove the caches that fail (a turn would re-prime them anyway)" },
    ...ADOPT_OPTION,
  },
  positionals: { name: "", min: 0, max: 0 },
  examples: [
    ["kvkeep verify", "exit 1 if any cache is damaged or could not be checked"],
    ["kvkeep verify --fix", "remove the damaged ones"],
    ["kvkeep verify --json > report.json", "every cache's status: ok, bad, removed, busy or error"],
  ],
  async run(ctx) {
    const fix = ctx.options.fix === true;
    // Without --fix it only reads: a root that does not exist yet has 0 caches, all fine.
    const state = fix ? await checkRoot(ctx.root) : await checkRootToRead(ctx.root);
    if (state === null) {
      ctx.note(noRootYet(ctx.root));
    } else if (fix) {
      assertKvkeepRoot(ctx, state);
      markAdopted(ctx, state);
    } else {
      noteIfNotRoot(ctx, state);
    }
    const root = state ?? { readOnly: false, readOnlyReason: null };
    const started = Date.now();
    const { caches } = state === null ? { caches: [] } : await readRoot(ctx.root);
    const nfs = loadNativeFs();
    const totalBytes = caches.reduce((sum, c) => sum + c.bytes, 0);
    const progress = progressBar(ctx.io.stderr, { label: "verifying", totalBytes, totalItems: caches.length, enabled: !ctx.json });
    const results: Result[] = [];
    let doneBytes = 0;
    for (const cache of caches) {
      const base = { scopeId: cache.scopeId, cacheKey: cache.cacheKey, modelId: cache.modelId, configHash: cache.configHash, cachePath: cache.cachePath, bytes: cache.bytes };
      results.push({ ...base, ...(await verifyOne(nfs, ctx.root, cache, fix, root.readOnly)) });
      doneBytes += cache.bytes;
      progress.update(doneBytes, results.length);
    }
    progress.finish();

    const count = (status: Status): number => results.filter((r) => r.status === status).length;
    const failed = count("bad") + count("error");
    const removedFiles = results.reduce((sum, r) => sum + (r.removedFiles ?? 0), 0);
    const summary =
      `${plural(results.length, "cache")} (${formatBytes(totalBytes)}) checked in ${formatElapsed(Date.now() - started)}: ` +
      [
        `${count("ok")} ok`,
        ...(count("bad") ? [`${count("bad")} damaged`] : []),
        ...(count("removed") ? [`${count("removed")} removed`] : []),
        ...(count("busy") ? [`${count("busy")} busy`] : []),
        ...(count("error") ? [`${plural(count("error"), "error")}`] : []),
        ...(count("foreign") ? [`${count("foreign")} not kvkeep's (left alone)`] : []),
      ].join(", ") +
      (root.readOnly ? ` (read-only root: checked without locks${fix ? ", nothing removed" : ""})` : "") +
      (fix && !root.readOnly ? `; removed ${plural(removedFiles, "file")}` : "");
    ctx.print({ root: ctx.root, readOnly: root.readOnly, results, removedFiles }, () => {
      const notable = results.filter((r) => r.status !== "ok");
      const table =
        notable.length === 0
          ? []
          : renderTable(
              [{ header: "STATUS" }, { header: "CACHE" }, { header: "REASON" }],
              notable.map((r) => [r.status, path.relative(ctx.root, r.cachePath), r.reason ?? ""]),
            );
      return [...table, ...(table.length > 0 ? [""] : []), summary];
    });
    return failed > 0 ? EXIT_FAILURE : 0;
  },
};

/**
 * One cache under its lock (taken without waiting); never throws: a failure is that cache's
 * `error`. A file no kvkeep manifest names is not a cache: it is reported `foreign` before any
 * lock is taken (a lock file would be created beside it) and never removed.
 */
async function verifyOne(nfs: NativeFs, root: string, cache: CacheRecord, fix: boolean, readOnly: boolean): Promise<Pick<Result, "status" | "reason" | "removedFiles">> {
  const read = await readManifest(cache.cachePath, nfs).catch((error: unknown) => ({ error: message(error) }));
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
    const verdict = await checkCache(nfs, cache);
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
