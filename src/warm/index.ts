/**
 * `kvkeep/warm`: the whole of cache warming (DESIGN.md §3). The package root re-exports the
 * seed's names and `createStoreWarmer` (src/index.ts); the rest — settings storage, the
 * prefetch strategy, the pure helpers past the seed's — is imported from here (docs/api.md).
 */
export {
  type ConversationSettings,
  type ConversationState,
  clampIntervalMs,
  computeCachePct,
  DEFAULT_INTERVAL_MS,
  defaultSettings,
  isTokenCurrent,
  MAX_INTERVAL_MS,
  MIN_INTERVAL_MS,
  parseSettings,
  serializeSettings,
  settingsKey,
  shouldWarm,
} from "./pure.js";
export type {
  SettingsStorage,
  TimerDeps,
  TimerId,
  WarmCallOptions,
  WarmContext,
  WarmError,
  WarmFn,
  WarmResult,
  WarmUsage,
} from "./types.js";
export { createCacheWarmer } from "./warmer.js";
export type { CacheWarmer, CacheWarmerDeps, WarmerStateSnapshot } from "./warmer-api.js";
export { createFileSettingsStorage, type FileSettingsStorageOptions, SETTINGS_FILE_MAX_BYTES } from "./file-storage.js";
export {
  createPrefetchWarm,
  PREFETCH_CHUNK_BYTES,
  type PrefetchFileOptions,
  type PrefetchWarmOptions,
  readFileThrough,
} from "./strategies.js";
export { connectWarmer, createStoreWarmer, type StoreWarmerOptions, warmSettingsDir } from "./store-warmer.js";
