/**
 * kvkeep — keep the KV cache of local LLM conversations on disk.
 *
 * The package root: what an app needs, every name documented in docs/api.md (a test keeps
 * the two equal). The seed contract (`createKvCacheSession`, `deleteKvCacheState`,
 * `generateConfigHash`, `decideCachedHistorySlice`, `getCurrentCacheInfo`,
 * `__kvCacheSessionTestHooks`) works on a default store; `openKvCacheStore` gives a store of
 * your own. Warming's seed names and `createStoreWarmer` are here; the rest of warming is
 * `kvkeep/warm`, the auto-key scheme `kvkeep/keys`.
 */
export { openKvCacheStore, type KvCacheStore, type KvCacheStoreOptions } from "./facade/kvkeep-store.js";
export type { RecoveryReport } from "./store/recovery.js";
export {
  createKvCacheSession,
  deleteKvCacheState,
  getCurrentCacheInfo,
  __kvCacheSessionTestHooks,
} from "./facade/default-store.js";
export { generateConfigHash, type ToolLike } from "./keys/config-hash.js";
export { attentionRotationSetting } from "./chunks/chunk-id.js";
export { decideCachedHistorySlice, type HistorySlice } from "./slice/decide.js";
export { KvKeepError, isKvKeepError, type KvKeepErrorCode } from "./errors.js";
export type { Logger } from "./logger.js";
export type { NativeBackendKind } from "./native/index.js";
export {
  type CacheWarmer,
  type CacheWarmerDeps,
  computeCachePct,
  type ConversationSettings,
  type ConversationState,
  createCacheWarmer,
  createStoreWarmer,
  DEFAULT_INTERVAL_MS,
  MIN_INTERVAL_MS,
  parseSettings,
  serializeSettings,
  type SettingsStorage,
  shouldWarm,
  type StoreWarmerOptions,
  type TimerDeps,
  type TimerId,
  type WarmCallOptions,
  type WarmContext,
  type WarmError,
  type WarmerStateSnapshot,
  type WarmFn,
  type WarmResult,
  type WarmUsage,
} from "./warm/index.js";
export type {
  AutoRenameCommitResult,
  BorrowedCache,
  BeginAutoTurnInput,
  BeginCustomTurnInput,
  BeginTurnInput,
  CacheInfo,
  CacheMessage,
  ChunkingOptions,
  CacheRefusal,
  CacheRefusalReason,
  CommitFailureReason,
  CommitOutcome,
  CommitResult,
  DeleteTarget,
  EvictedCache,
  KvCacheSession,
  PrefixMatch,
  PrefixQuery,
  SessionOptions,
  StaticCommitResult,
  StoreUsage,
  SweepOptions,
  SweepResult,
  TurnEvent,
  TurnHandle,
} from "./types.js";
