/**
 * Trust on load, in one place: whether the cache at `cachePath` may be handed to an engine
 * of a given model fingerprint. Used by `beginTurn` and by `store.useCache` (preloading).
 * The caller holds the cache's lock.
 */
import { inspectFile } from "../durable/files.js";
import { cacheKindOf } from "../keys/safe-key.js";
import type { CacheLocation } from "../layout/paths.js";
import { logLine } from "../logger.js";
import { sameIdentity } from "../durable/identity.js";
import type { Manifest } from "../manifest/format.js";
import { removeCacheFiles, verifyCache } from "../manifest/store.js";
import type { StoreContext } from "./context.js";
import { initKey, type TrustedCache } from "./layers.js";
import type { CacheRefusal } from "../types.js";

export function manifestHeader(loc: CacheLocation, fingerprint: string | null): Omit<Manifest, "current" | "pending" | "format"> {
  return {
    kind: cacheKindOf(loc.cacheKey),
    // Only scoped caches name a scope: a shared-space manifest is written as before scopes.
    ...(loc.scopeId !== null ? { scope: loc.scopeId } : {}),
    modelId: loc.modelId,
    fingerprint,
    configHash: loc.configHash,
    cacheKey: loc.cacheKey,
  };
}

/** What `establishTrust` found: the trusted entry, or none — and then maybe a refused file. */
export type TrustOutcome =
  | { trusted: TrustedCache; refused: null }
  /** `refused`: the file that was there, not trusted and removed (null: nothing was there). */
  | { trusted: null; refused: CacheRefusal | null };

/**
 * The trusted committed entry of the cache, or none — after removing a file that is not
 * trusted (logged, and returned as `refused` with its reason) and forgetting a missing one.
 * A file this store wrote or verified for the same fingerprint is trusted while its identity
 * is unchanged; any other is verified against its manifest (and by checksum with
 * `verify: "checksum"`). With `wholeOnly` (a reader that loads the file itself), a chunked
 * cache is refused as foreign.
 */
export async function establishTrust(
  ctx: StoreContext,
  cachePath: string,
  loc: CacheLocation,
  fingerprint: string | null,
  options: { wholeOnly?: boolean } = {},
): Promise<TrustOutcome> {
  const wholeOnly = options.wholeOnly ?? false;
  const init = initKey(loc);
  const state = await inspectFile(cachePath, ctx.fsBackend);
  if (state.kind === "missing") {
    // Nothing on disk: whatever memory says about this path is stale.
    ctx.forgetCache(cachePath, init);
    return { trusted: null, refused: null };
  }
  // A symlink, directory, FIFO or device is never trusted: verifyCache says why, and it is removed.
  const known = ctx.layers.trusted.get(cachePath);
  if (
    state.kind === "file" &&
    known &&
    known.fingerprint === fingerprint &&
    !(wholeOnly && known.chunks) &&
    sameIdentity(known, state.identity) &&
    ctx.layers.initialized.has(init)
  ) {
    return { trusted: known, refused: null };
  }
  const verdict = await verifyCache(ctx.fsBackend, cachePath, { ...manifestHeader(loc, fingerprint), wholeOnly }, {
    checksum: ctx.verify === "checksum",
  });
  if (verdict.ok) {
    ctx.layers.recordTrusted(cachePath, init, verdict.entry, fingerprint);
    ctx.logger.debug(logLine("verified cache", { cachePath, by: verdict.by }));
    return { trusted: ctx.layers.trusted.get(cachePath)!, refused: null };
  }
  // A file gone between the look and the verification (a delete) is a plain miss, not a refusal.
  const refused: CacheRefusal | null = verdict.missing ? null : { reason: verdict.refusal, detail: verdict.reason, cachePath };
  ctx.logger.warn(
    logLine("cache not trusted; removing it (the next turn primes again)", {
      cachePath,
      reason: refused ? refused.detail : "cache file vanished",
      ...(refused ? { refusal: refused.reason } : {}),
    }),
  );
  await removeCacheFiles(cachePath);
  ctx.retention.noteRemoved(cachePath);
  ctx.forgetCache(cachePath, init);
  return { trusted: null, refused };
}
