/**
 * Wiring the warmer to a store in one line: the store's turn events drive the warmer
 * (`turnStarted` cancels, `turnSettled` arms with the cache that the next turn will load),
 * settings persist under the root, and the default strategy prefetches that cache file
 * into the page cache through the native addon (or a read, in the JS fallback).
 */
import path from "node:path";
import { internalDir } from "../layout/paths.js";
import { loadNativeFs } from "../native/index.js";
import type { KvCacheStore } from "../facade/kvkeep-store.js";
import type { TurnEvent } from "../types.js";
import { createFileSettingsStorage } from "./file-storage.js";
import { createPrefetchWarm } from "./strategies.js";
import type { SettingsStorage, WarmFn } from "./types.js";
import { createCacheWarmer } from "./warmer.js";
import type { CacheWarmer, CacheWarmerDeps } from "./warmer-api.js";

/** A store event listener that drives `warmer`. */
export function connectWarmer(warmer: CacheWarmer): (event: TurnEvent) => void {
  return (event) => {
    if (event.type === "turnStarted") {
      warmer.onTurnStarted(event.conversationId);
    } else {
      warmer.onTurnSettled(event.conversationId, {
        cachePath: event.cachePath,
        modelId: event.modelId,
        ...(typeof event.tokenCount === "number" ? { tokenCount: event.tokenCount } : {}),
      });
    }
  };
}

export interface StoreWarmerOptions extends Omit<CacheWarmerDeps, "warm" | "storage"> {
  /** The warm strategy. Default: prefetch the conversation's cache file into the page cache. */
  readonly warm?: WarmFn;
  /**
   * Where settings persist. Default: one file per conversation under `<root>/.kvkeep/warm`
   * (`createFileSettingsStorage(dir, { root })`: a symlinked `.kvkeep` or `warm` is refused).
   */
  readonly storage?: SettingsStorage;
}

/** The directory `createStoreWarmer` keeps settings in by default. */
export function warmSettingsDir(store: Pick<KvCacheStore, "root">): string {
  return path.join(internalDir(store.root), "warm");
}

/**
 * A warmer driven by `store`'s turns. `dispose()` also stops listening to the store.
 *
 *     const warmer = createStoreWarmer(store);          // that's all
 *     warmer.getState(conversationId)                    // { enabled, intervalMs, lastPct, armed, … }
 */
export function createStoreWarmer(store: KvCacheStore, options: StoreWarmerOptions = {}): CacheWarmer {
  const nativeFs = loadNativeFs();
  const warmer = createCacheWarmer({
    ...options,
    warm: options.warm ?? createPrefetchWarm({ prefetchFile: (file) => nativeFs.prefetch(file) }),
    // Below the root: `.kvkeep` and `warm` are made one level at a time, never through a symlink.
    storage:
      options.storage ??
      createFileSettingsStorage(warmSettingsDir(store), { root: store.root, ...(options.logger ? { logger: options.logger } : {}) }),
  });
  const unsubscribe = store.onTurnEvent(connectWarmer(warmer));
  return {
    ...warmer,
    dispose() {
      unsubscribe();
      warmer.dispose();
    },
  };
}
