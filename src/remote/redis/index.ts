/**
 * `kvkeep/redis`: a shared remote tier on Redis, Redis Cluster or Valkey, behind the local
 * disk tier. `openKvCacheStore({ remote: createRedisTier({ url }) })`. Needs the `redis`
 * package (node-redis), an optional peer dependency of kvkeep.
 */
export {
  createRedisTier,
  DEFAULT_CHUNK_BYTES,
  DEFAULT_TIMEOUT_MS,
  DEFAULT_TRANSFER_TIMEOUT_MS,
  DEFAULT_TTL_SECONDS,
  RedisTier,
  type RedisTierOptions,
} from "./tier.js";
export type { NodeRedisClientLike } from "./connections.js";
export type {
  CollectTokenChunksOutcome,
  EvictOutcome,
  FetchOutcome,
  GetChunkOutcome,
  PutChunksOutcome,
  RemoteCacheId,
  RemoteDeleteTarget,
  RemoteListing,
  RemotePrefixHit,
  RemoteScope,
  RemoteServerUsage,
  RemoteState,
  RemoteStateRecord,
  RemoteStats,
  RemoteTier,
  RemoveOutcome,
  ReserveOutcome,
  ServerUsageOutcome,
  TokenChunkCollection,
  UploadOutcome,
  UploadTicket,
} from "../types.js";
