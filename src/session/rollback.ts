/** A turn's end: rollback per the policy, and settling (release, prune, the turnSettled event). */
import { statIdentity, unlinkIfExists } from "../durable/files.js";
import { parseCachePath } from "../layout/paths.js";
import { sameIdentity } from "../durable/identity.js";
import { deletedSinceTurnBegan, type SessionEnv, type TurnState } from "./turn.js";

/** End a turn: release its lock and directory ref (pruning if its cache went), then say so. */
export async function settle(
  env: SessionEnv,
  st: TurnState,
  removed: boolean,
  info: { outcome: "committed" | "rolledBack"; cachePath: string; messageCount?: number; tokenCount?: number | null },
): Promise<void> {
  const { ctx, scopeId, modelId, log } = env;
  st.memory?.close(); // the turn's in-memory file (a chunked session's savePath) ends with it
  await ctx.releaseCache(st.lease, st.cachePath, removed).catch((error: unknown) => {
    log("warn", "could not prune the cache directory", { cachePath: st.cachePath, error });
  });
  ctx.emit({
    type: "turnSettled",
    conversationId: st.handle.conversationId,
    scopeId,
    kind: st.handle.kind,
    cacheKey: parseCachePath(ctx.root, info.cachePath)?.cacheKey ?? st.loc.cacheKey,
    modelId,
    configHash: st.loc.configHash,
    cachePath: info.cachePath,
    outcome: info.outcome,
    ...(info.outcome === "committed" ? { messageCount: info.messageCount ?? 0, tokenCount: info.tokenCount ?? null } : {}),
  });
}

/**
 * Roll back per the session's policy. "clear" (and any turn that rewrote the cache in
 * place, or whose cache was deleted) removes all three layers; "keep-committed" only drops
 * the turn's unsaved state when the committed cache was never touched. True when the
 * cache was cleared.
 */
export async function rollbackTurn(env: SessionEnv, st: TurnState, rollbackPolicy = env.policy): Promise<boolean> {
  const { ctx, log } = env;
  if (st.status !== "open") return false;
  st.status = "rolledBack";
  if (!st.memory) await unlinkIfExists(st.handle.savePath).catch(() => {});
  let clear = rollbackPolicy === "clear" || (await deletedSinceTurnBegan(env, st, st.cachePath));
  if (!clear) {
    const now = await statIdentity(st.cachePath).catch(() => null);
    clear = !(now && st.beginIdentity && sameIdentity(now, st.beginIdentity));
  }
  if (clear) {
    try {
      await ctx.removeCache(st.cachePath);
    } catch (error) {
      ctx.forgetCache(st.cachePath, st.init);
      log("warn", "could not remove the cache file during rollback; it will be re-verified before use", {
        cachePath: st.cachePath,
        error,
      });
    }
  }
  await settle(env, st, clear, { outcome: "rolledBack", cachePath: st.cachePath });
  return clear;
}
