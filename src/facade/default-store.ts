/**
 * The seed's module-level API on a lazily opened default store (root from `KVKEEP_DIR`,
 * else the XDG cache dir), and the seed's test hooks on that store's layers.
 */
import { autoCacheKey, assertHistory } from "../keys/auto-key.js";
import { assertConfigHash, assertModelId } from "../keys/safe-key.js";
import { cachePathOf } from "../layout/paths.js";
import { initKey } from "../store/layers.js";
import { KvCacheStoreImpl } from "./kvkeep-store.js";
import type { CacheMessage, DeleteTarget, KvCacheSession, SessionOptions } from "../types.js";

let defaultStore: KvCacheStoreImpl | null = null;

/** The default store, opened on first use. */
export function getDefaultStore(): KvCacheStoreImpl {
  defaultStore ??= new KvCacheStoreImpl();
  return defaultStore;
}

/**
 * A session on the default store (the seed's entry point). Its rollback is the seed's
 * three-layer clear unless `options.onRollback` says otherwise (the store's own default,
 * used by adapters and `openKvCacheStore`, keeps the last committed state).
 */
export function createKvCacheSession(modelId: string, options?: SessionOptions): KvCacheSession {
  const seedDefaults = options === undefined || (typeof options === "object" && options !== null);
  return getDefaultStore().createSession(
    modelId,
    seedDefaults ? { ...options, onRollback: options?.onRollback ?? "clear" } : options, // a bad value: createSession says so
  );
}

/** Delete a key's caches (all models, or one) or everything, on the default store. */
export function deleteKvCacheState(target: DeleteTarget): Promise<void> {
  return getDefaultStore().delete(target);
}

/** Where auto mode keeps the cache of `history` on the default store. */
export async function getCurrentCacheInfo(
  modelId: string,
  configHash: string,
  history: readonly CacheMessage[],
): Promise<{ cacheKey: string; cachePath: string }> {
  assertModelId(modelId);
  assertConfigHash(configHash);
  assertHistory(history);
  const cacheKey = autoCacheKey(history);
  return { cacheKey, cachePath: cachePathOf(getDefaultStore().root, { scopeId: null, cacheKey, modelId, configHash }) };
}

/**
 * Test-only access to the default store's in-memory layers (seed contract).
 * @internal
 */
export const __kvCacheSessionTestHooks = {
  getSavedCount(cachePath: string): number | undefined {
    return getDefaultStore().layers.savedCounts.get(cachePath);
  },
  setSavedCountForTest(cachePath: string, count: number): void {
    getDefaultStore().layers.savedCounts.set(cachePath, count);
  },
  hasInitializedKey(modelId: string, configHash: string, cacheKey: string): boolean {
    return getDefaultStore().layers.initialized.has(initKey({ scopeId: null, modelId, configHash, cacheKey }));
  },
  markInitializedForTest(modelId: string, configHash: string, cacheKey: string): void {
    getDefaultStore().layers.initialized.add(initKey({ scopeId: null, modelId, configHash, cacheKey }));
  },
  /** Forget all in-memory state and the default store itself (the next use re-reads `KVKEEP_DIR`). */
  resetForTest(): void {
    defaultStore?.layers.clear();
    void defaultStore?.close();
    defaultStore = null;
  },
};
