/** Committing an auto turn: its new state moves to the key of `history + reply`. */
import { isKvKeepError } from "../errors.js";
import { crashPoint } from "../durable/crash-points.js";
import { statIdentity, unlinkIfExists } from "../durable/files.js";
import { chainKeyOfAuto } from "../keys/auto-key.js";
import { type CacheLocation, cachePathOf } from "../layout/paths.js";
import type { ManifestEntry } from "../manifest/format.js";
import { verifyCache } from "../manifest/store.js";
import type { Lease } from "../locks/path-locks.js";
import { initKey } from "../store/layers.js";
import { manifestHeader } from "../store/trust.js";
import type { CommitResult } from "../types.js";
import { commitStatic } from "./commit-static.js";
import { assertSavedInMemory, findNewState, type NewState, withNewState } from "./new-state.js";
import { assertNotDeleted, type CommittedOutcome, identityOf, install, type SessionEnv, stateChain, type TurnState } from "./turn.js";

/**
 * Move the turn's new state to the key of `history + reply`. If that target already holds
 * a committed cache (the same history, committed by another turn or process), keep it and
 * drop ours — never mix the two. The target is held only briefly by others (a sweep, a
 * preload, recovery) unless a turn resumes from it, which means it exists: so wait for it
 * when it does not exist, and keep theirs when it does.
 */
export async function commitAuto(
  env: SessionEnv,
  st: TurnState,
  result: CommitResult & { kind: "autoRename" },
  target: CacheLocation,
): Promise<CommittedOutcome> {
  const { ctx, fingerprint, log } = env;
  const targetPath = cachePathOf(ctx.root, target);
  // What the new state holds: the turn's history and the reply, whose key names the target.
  const chain = st.historyChain ? stateChain(st.historyChain, result.messageCount, [chainKeyOfAuto(target.cacheKey)]) : null;
  if (targetPath === st.cachePath) return commitStatic(env, st, { ...result, kind: "static" }, chain);
  // A chunked session's state is in memory: it is written beside the target at the install.
  const source = st.memory ? null : await findNewState(env, st);
  assertSavedInMemory(st);
  const targetInit = initKey(target);
  const targetHeader = manifestHeader(target, fingerprint);
  let outcome: CommittedOutcome;
  let targetLease: Lease | null = null;
  let targetExists = false;
  ctx.layers.refDir(targetPath);
  try {
    await ctx.ensureCacheDir(target);
    targetLease = ctx.locks.tryAcquire(targetPath);
    if (!targetLease && (await statIdentity(targetPath))) {
      log("debug", "commit target is in use and exists; keeping it", { targetPath });
      outcome = { committed: true, cachePath: targetPath, messageCount: result.messageCount, keptExisting: true, file: null };
    } else {
      targetLease ??= await ctx.locks.acquire(targetPath);
      const existing = await verifyCache(ctx.fsBackend, targetPath, { ...targetHeader, wholeOnly: env.chunking === null }, { checksum: false });
      if (existing.ok) {
        ctx.layers.recordTrusted(targetPath, targetInit, existing.entry, fingerprint);
        outcome = { committed: true, cachePath: targetPath, messageCount: existing.entry.messageCount, keptExisting: true, file: null };
      } else {
        if (!existing.missing) {
          log("warn", "commit target not trusted; replacing it", { targetPath, reason: existing.reason });
          await ctx.removeCache(targetPath);
        }
        try {
          const install_ = (state: NewState): Promise<ManifestEntry> =>
            install(env, {
              source: state.path,
              target: targetPath,
              header: targetHeader,
              previous: null,
              messageCount: result.messageCount,
              tokenCount: result.tokenCount ?? null,
              chain,
              chunks: state.chunks,
              noReplace: true,
            });
          const entry = source ? await install_({ ...source, chunks: null }) : await withNewState(env, st, targetPath, install_);
          ctx.layers.recordTrusted(targetPath, targetInit, entry, fingerprint);
          ctx.retention.noteCommitted(targetPath, entry, fingerprint);
          outcome = { committed: true, cachePath: targetPath, messageCount: result.messageCount, keptExisting: false, file: identityOf(entry) };
        } catch (error) {
          if (!isKvKeepError(error, "TARGET_EXISTS")) throw error;
          // Lost a race with a process that has no lock to respect (JS fallback): theirs stays.
          outcome = { committed: true, cachePath: targetPath, messageCount: result.messageCount, keptExisting: true, file: null };
        }
      }
      await assertNotDeleted(env, st, outcome.keptExisting ? null : targetPath, targetPath, st.cachePath);
    }
    targetExists = (await statIdentity(targetPath).catch(() => undefined)) !== null;
  } finally {
    if (targetLease) await ctx.releaseCache(targetLease, targetPath, !targetExists);
    else ctx.layers.unrefDir(targetPath);
  }
  // The target is committed: from here a failure only leaves the superseded source
  // behind (a valid cache of the shorter history, for retention to evict) — never fails
  // the commit.
  try {
    await crashPoint("auto:after-target-installed");
    // The source is superseded by the target: remove it and every layer of it.
    if (source && (!source.inPlace || outcome.keptExisting)) await unlinkIfExists(source.path);
    await ctx.removeCache(st.cachePath);
    await crashPoint("auto:after-source-removed");
  } catch (error) {
    log("warn", "the auto commit is done, but its superseded source cache could not be removed", { cachePath: st.cachePath, error });
  }
  return outcome;
}
