/**
 * Recovery at open: remove what crashed writers left behind — temp files whose writer is
 * dead, and manifests whose cache file is gone. Runs in the background; every removal
 * happens under the cache's lock taken without waiting, so a cache another live process
 * (or a turn of this one) is writing is never touched.
 */
import { inspectFile, unlinkIfExists } from "../durable/files.js";
import { cachePathOf, manifestPathOf, tempOwnerPid } from "../layout/paths.js";
import { logLine } from "../logger.js";
import type { StoreContext } from "./context.js";
import { type ScannedModelDir, scanRoot } from "./scan.js";

export interface RecoveryReport {
  removedTemps: number;
  removedManifests: number;
  /** Leftovers skipped because their cache was locked by a live turn. */
  skippedBusy: number;
}

function processAlive(pid: number): boolean {
  if (pid === process.pid) return true;
  try {
    process.kill(pid, 0);
    return true;
  } catch (error) {
    // EPERM: it exists but belongs to someone else — alive.
    return (error as NodeJS.ErrnoException).code === "EPERM";
  }
}

/**
 * `visit` sees every model directory of the walk first (the retention index is built from
 * the same walk, so the root is walked once at open).
 */
export async function recoverRoot(
  ctx: StoreContext,
  visit?: (modelDir: ScannedModelDir) => Promise<void>,
): Promise<RecoveryReport> {
  const report: RecoveryReport = { removedTemps: 0, removedManifests: 0, skippedBusy: 0 };
  for await (const modelDir of scanRoot(ctx.root)) {
    await visit?.(modelDir);
    const names = new Set(modelDir.files.map((f) => f.name));
    for (const file of modelDir.files) {
      const isOrphanManifest = file.kind === "manifest" && !names.has(`${file.configHash}.bin`);
      const owner = file.kind === "temp" ? tempOwnerPid(file.name) : undefined;
      const isDeadTemp = owner !== undefined && !processAlive(owner);
      if (!isOrphanManifest && !isDeadTemp) continue;
      const cachePath = cachePathOf(ctx.root, {
        cacheKey: modelDir.cacheKey,
        modelId: modelDir.modelId,
        configHash: file.configHash!,
      });
      const lease = ctx.locks.tryAcquire(cachePath);
      if (!lease) {
        report.skippedBusy++;
        continue;
      }
      try {
        if (isDeadTemp) {
          if (await unlinkIfExists(file.path)) report.removedTemps++;
        } else if ((await inspectFile(cachePath, ctx.nfs)).kind === "missing" && (await unlinkIfExists(manifestPathOf(cachePath)))) {
          // (re-checked under the lock: a commit may have created the file since the scan)
          report.removedManifests++;
        }
      } finally {
        // Taking the lock may have created a lock file; leave none beside a cache that is gone.
        lease.release({ removeLockFile: (await inspectFile(cachePath, ctx.nfs)).kind === "missing" });
      }
    }
  }
  if (report.removedTemps + report.removedManifests > 0) {
    ctx.logger.info(logLine("recovered cache root", { root: ctx.root, ...report }));
  }
  return report;
}
