/**
 * Recovery: remove what crashed writers left behind — temp files whose writer is dead (beside
 * caches, and beside chunks under `.kvkeep/chunks/`), and manifests whose cache file is gone —
 * and nothing else: a temp by its kvkeep name (beside a
 * cache or manifest, in a model directory), a manifest only when it is a kvkeep manifest
 * naming its own place (src/manifest/ownership.ts). Runs in the background at open, and again on every
 * walk a retention resync makes (so a writer that dies while the store is open has its
 * temps removed by a later sweep).
 *
 * A temp file's writer is judged by its name (src/durable/temp-owner.ts: pid and a stamp of
 * the process's incarnation, so a pid reused after a crash or reboot does not keep it
 * alive). A dead writer's temp is used by nobody, so it is removed without any lock. An
 * orphan manifest is removed under the cache's lock taken without waiting, so a cache
 * another live process (or a turn of this one) is writing is never touched.
 */
import { promises as fs } from "node:fs";
import { listChunkFiles, removeDeadChunkTemps } from "../chunkfiles/collect.js";
import { inspectFile, unlinkIfExists } from "../durable/files.js";
import { deadWritersTemp } from "../durable/temp-owner.js";
import { cachePathOf, manifestPathOf } from "../layout/paths.js";
import { provenCache } from "../manifest/ownership.js";
import { logLine } from "../logger.js";
import type { StoreContext } from "./context.js";
import { type ScannedModelDir, scanRoot } from "../catalog/scan.js";

export interface RecoveryReport {
  removedTemps: number;
  removedManifests: number;
  /** Leftovers skipped because their cache was locked by a live turn. */
  skippedBusy: number;
}

/** Remove the temp files of dead writers in one model directory; returns the directory without them. */
async function removeDeadTemps(ctx: StoreContext, modelDir: ScannedModelDir, report: RecoveryReport): Promise<ScannedModelDir> {
  const removed = new Set<string>();
  for (const file of modelDir.files) {
    if (file.kind !== "temp" || !deadWritersTemp(file.name)) continue;
    try {
      if (await unlinkIfExists(file.path)) report.removedTemps++;
      removed.add(file.name);
    } catch (error) {
      // Left in place (and counted in usage() as stale temp bytes until a later walk removes it).
      ctx.logger.warn(logLine("could not remove a dead writer's temp file", { path: file.path, error }));
    }
  }
  return removed.size === 0 ? modelDir : { ...modelDir, files: modelDir.files.filter((f) => !removed.has(f.name)) };
}

/**
 * Walk the root once and recover each model directory. `visit` sees every model directory
 * (after its dead temps are gone): the retention index is built from the same walk.
 */
export async function recoverRoot(
  ctx: StoreContext,
  visit?: (modelDir: ScannedModelDir) => Promise<void>,
): Promise<RecoveryReport> {
  const report: RecoveryReport = { removedTemps: 0, removedManifests: 0, skippedBusy: 0 };
  for await (const scanned of scanRoot(ctx.root)) {
    const modelDir = await removeDeadTemps(ctx, scanned, report);
    await visit?.(modelDir);
    const names = new Set(modelDir.files.map((f) => f.name));
    for (const file of modelDir.files) {
      if (file.kind !== "manifest" || names.has(`${file.configHash}.bin`)) continue;
      const loc = { scopeId: modelDir.scopeId, cacheKey: modelDir.cacheKey, modelId: modelDir.modelId, configHash: file.configHash! };
      const cachePath = cachePathOf(ctx.root, loc);
      // (a .bin that is not a regular file is not listed, but is not missing either)
      if ((await fs.lstat(cachePath).catch(() => null)) !== null) continue;
      // Only a manifest that proves itself kvkeep's (it names this very place) is an orphan:
      // someone's `notes.meta.json` is not.
      if (!(await provenCache(cachePath, loc, ctx.fsBackend))) continue;
      let lease;
      try {
        lease = ctx.locks.tryAcquire(cachePath);
      } catch (error) {
        // A lock file that cannot be opened (UNSAFE_PATH for a planted symlink): leave the cache alone.
        ctx.logger.debug(logLine("recovery skipped a cache whose lock cannot be taken", { cachePath, error }));
        continue;
      }
      if (!lease) {
        report.skippedBusy++;
        continue;
      }
      try {
        // (re-checked under the lock: a commit may have created the file since the scan)
        if ((await inspectFile(cachePath, ctx.fsBackend)).kind === "missing" && (await unlinkIfExists(manifestPathOf(cachePath)))) {
          report.removedManifests++;
        }
      } finally {
        // Taking the lock may have created a lock file; leave none beside a cache that is gone.
        lease.release({ removeLockFile: (await inspectFile(cachePath, ctx.fsBackend).catch(() => null))?.kind === "missing" });
      }
    }
  }
  // Chunk writers' temps under .kvkeep/chunks/ (a chunk file's name + a kvkeep temp suffix) whose writer is dead.
  try {
    report.removedTemps += await removeDeadChunkTemps((await listChunkFiles(ctx.root)).temps);
  } catch (error) {
    ctx.logger.warn(logLine("could not remove dead writers' chunk temps", { error }));
  }
  if (report.removedTemps + report.removedManifests > 0) {
    ctx.logger.info(logLine("recovered cache root", { root: ctx.root, ...report }));
  }
  return report;
}
