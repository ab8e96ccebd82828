/**
 * kvkeep — keep the KV cache of local LLM conversations on disk.
 *
 * The seed contract (`createKvCacheSession`, `deleteKvCacheState`, `generateConfigHash`,
 * `decideCachedHistorySlice`, `getCurrentCacheInfo`, `__kvCacheSessionTestHooks`) works on a
 * default store; `openKvCacheStore` gives a store of your own.
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
export { autoCacheKey, KeyChain, messageKeyChain, normalizeAssistantContent } from "./keys/auto-key.js";
export { decideCachedHistorySlice, type HistorySlice } from "./slice/decide.js";
export { KvKeepError, isKvKeepError, type KvKeepErrorCode } from "./errors.js";
export type { Logger } from "./logger.js";
export type { NativeBackendKind } from "./native/index.js";
export * from "./warm/index.js";
export type {
  AutoRenameCommitResult,
  BorrowedCache,
  BeginAutoTurnInput,
  BeginCustomTurnInput,
  BeginTurnInput,
  CacheInfo,
  CacheMessage,
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
