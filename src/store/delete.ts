/**
 * `store.delete`: a key's caches (one model, or all) in one scope, or everything, removed
 * on disk and in memory — only what is provably kvkeep's — and recorded in the shared delete
 * log around it, so a turn open on a removed cache (in any process) refuses its commit.
 */
import path from "node:path";
import { KvKeepError } from "../errors.js";
import { pruneEmptyDirs, unlinkIfExists } from "../durable/files.js";
import { deadWritersTemp, ownTempName } from "../durable/temp-owner.js";
import { listKeyDirs, listScopeIds, scanKeyDir } from "../catalog/scan.js";
import { assertCacheKey, assertModelId } from "../keys/safe-key.js";
import { SCOPE_ID_PATTERN, scopeIdOption } from "../keys/scope.js";
import { cacheKeyDir, cachePathOf } from "../layout/paths.js";
import { logLine } from "../logger.js";
import { isOwnLockFile, provenCache } from "../manifest/ownership.js";
import type { DeleteTarget } from "../types.js";
import type { StoreContext } from "./context.js";
import type { DeleteScope, Deletes } from "./deletes.js";

/** What `store.delete` removed (the CLI prints it). @internal */
export interface DeleteReport {
  /** Caches removed (a `.bin` with its manifest). */
  caches: number;
  /** Every file removed: cache files, manifests, lock files, dead writers' temps. */
  removedFiles: number;
  /** Files in the deleted directories left in place because nothing proves them kvkeep's. */
  leftFiles: string[];
}

/** `store.delete`, resolving to what it removed and what it left (the CLI's summary). */
export async function deleteReporting(ctx: StoreContext, deletes: Deletes, target: DeleteTarget): Promise<DeleteReport> {
  if (!target || typeof target !== "object") {
    throw new KvKeepError("INVALID_ARGUMENT", "delete needs { kvCacheKey, modelId?, scope? } or { all: true }.", {
      argument: "target",
    });
  }
  let recorded: DeleteScope[];
  if ("all" in target) {
    if (target.all !== true) {
      throw new KvKeepError("INVALID_ARGUMENT", "delete({ all }) needs all: true.", { argument: "all" });
    }
    // A caller meaning "everything of this scope" must not get everything of every scope.
    if ("scope" in target || "scopeId" in target) {
      throw new KvKeepError("INVALID_ARGUMENT", "delete({ all: true }) removes every scope's caches and takes no scope; delete one scope's keys by name instead.", {
        argument: "scope",
      });
    }
    recorded = [{}];
  } else {
    assertCacheKey(target.kvCacheKey);
    if (target.modelId !== undefined) assertModelId(target.modelId);
    recorded = [{ scopeId: deleteScopeId(target), cacheKey: target.kvCacheKey, modelId: target.modelId }];
  }
  ctx.assertOpen();
  const report: DeleteReport = { caches: 0, removedFiles: 0, leftFiles: [] };
  // Recorded before any file goes (in memory and in the shared log), so a turn in any
  // process that took its lock before this point sees it at its commit; and again when
  // everything is gone, so a turn that took its lock while this ran sees it too.
  await deletes.record(recorded, "start");
  try {
    const keys: Array<{ scopeId: string | null; cacheKey: string; modelId?: string | undefined }> = [];
    if ("all" in target) {
      for (const scopeId of [null, ...(await listScopeIds(ctx.root))]) {
        for (const cacheKey of await listKeyDirs(ctx.root, scopeId)) keys.push({ scopeId, cacheKey });
      }
    } else keys.push(recorded[0] as { scopeId: string | null; cacheKey: string; modelId?: string });
    for (const key of keys) await removeKey(ctx, key.scopeId, key.cacheKey, key.modelId, report);
  } finally {
    await deletes.record(recorded, "end");
  }
  if ("all" in target) ctx.layers.clear();
  // Remote hook: the fleet's copy goes too, with a tombstone against uploads in flight.
  const removed = recorded[0]!;
  await ctx.remote?.afterDelete(
    "all" in target ? { all: true } : { scopeId: removed.scopeId ?? null, kvCacheKey: removed.cacheKey!, modelId: removed.modelId },
  );
  return report;
}

/**
 * Remove every file of a key (one model, or all) in one scope's space that is provably
 * kvkeep's, and what memory knows of it: caches and manifests whose manifest names their
 * place (their scope included), their (empty) lock files, dead writers' temps
 * (src/manifest/ownership.ts). Anything else stays, logged, and a directory is pruned only
 * when this removed something from it.
 */
async function removeKey(ctx: StoreContext, scopeId: string | null, cacheKey: string, modelId: string | undefined, report: DeleteReport): Promise<void> {
  const keyDir = cacheKeyDir(ctx.root, cacheKey, scopeId);
  const removedDir = modelId === undefined ? keyDir : path.join(keyDir, modelId);
  for (const modelDir of await scanKeyDir(ctx.root, cacheKey, modelId, false, scopeId)) {
    const removedBefore = report.removedFiles;
    // Proven before anything goes: removing a cache takes its manifest, the proof, with it.
    const proven = new Set<string>();
    for (const file of modelDir.files) {
      if ((file.kind === "cache" || file.kind === "manifest") && !proven.has(file.configHash!)) {
        const loc = { scopeId, cacheKey: modelDir.cacheKey, modelId: modelDir.modelId, configHash: file.configHash! };
        if (await provenCache(cachePathOf(ctx.root, loc), loc, ctx.fsBackend)) proven.add(file.configHash!);
      }
    }
    const left = (file: { path: string }): void => {
      report.leftFiles.push(file.path);
      ctx.logger.warn(logLine("delete left a file that is not provably kvkeep's", { path: file.path }));
    };
    for (const file of modelDir.files) {
      if (file.kind === null) {
        left(file);
      } else if (file.kind === "lock") {
        // The lock of a cache proven here; an empty file alone named `x.lock` may be someone's mutex.
        if (!proven.has(file.configHash!) || !(await isOwnLockFile(file.path))) {
          left(file);
          continue;
        }
        const cachePath = cachePathOf(ctx.root, { scopeId, cacheKey: modelDir.cacheKey, modelId: modelDir.modelId, configHash: file.configHash! });
        if (!ctx.fsBackend.crossProcessLocks) {
          if (await unlinkIfExists(file.path)) report.removedFiles++;
        } else {
          // Only an unheld lock file may go: a holder must keep excluding newcomers.
          const lease = ctx.locks.tryAcquire(cachePath);
          if (lease) {
            lease.release({ removeLockFile: true });
            report.removedFiles++;
          }
        }
      } else if (file.kind === "cache") {
        if (!proven.has(file.configHash!)) {
          left(file);
          continue;
        }
        const files = await ctx.removeCache(file.path);
        report.removedFiles += files;
        report.caches++;
      } else if (file.kind === "temp") {
        // A live writer's temp belongs to a turn in flight: it ends that turn itself (its
        // commit sees this delete and refuses). A dead writer's is a leftover.
        if (!ownTempName(file.name)) left(file);
        else if (deadWritersTemp(file.name) && (await unlinkIfExists(file.path))) report.removedFiles++;
      } else if (!proven.has(file.configHash!)) {
        left(file);
      } else if (await unlinkIfExists(file.path)) {
        report.removedFiles++; // a manifest whose cache went before it (or is gone)
      }
    }
    ctx.layers.forgetUnder(modelDir.dir, () => false);
    if (report.removedFiles > removedBefore) await pruneEmptyDirs(ctx.root, modelDir.dir, (dir) => ctx.layers.isDirActive(dir));
  }
  ctx.layers.forgetUnder(
    removedDir,
    (loc) => loc.scopeId === scopeId && loc.cacheKey === cacheKey && (modelId === undefined || loc.modelId === modelId),
  );
}

/** The scope id a keyed delete names: by `scope`, by `scopeId`, or null (the shared space). */
function deleteScopeId(target: { scope?: string | undefined; scopeId?: string | undefined }): string | null {
  if (target.scopeId === undefined) return scopeIdOption(target.scope);
  if (target.scope !== undefined) {
    throw new KvKeepError("INVALID_ARGUMENT", "delete takes scope or scopeId, not both.", { argument: "scopeId" });
  }
  if (typeof target.scopeId !== "string" || !SCOPE_ID_PATTERN.test(target.scopeId)) {
    throw new KvKeepError("INVALID_ARGUMENT", "scopeId must be a scope's id: 32 hex characters, as kvkeep scan shows it.", { argument: "scopeId" });
  }
  return target.scopeId;
}
