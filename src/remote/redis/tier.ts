/**
 * The Redis tier (`kvkeep/redis`): committed states kept in Redis, Redis Cluster or Valkey
 * for the other machines of a fleet. This class only composes the parts, one job each:
 *
 * - upload.ts: reserve a commit's generation, send its chunks, publish its record, index
 *   its prefixes;
 * - download.ts: has, fetchTo (chunk by chunk, verified), lookupPrefix;
 * - delete.ts: remove, with tombstones;
 * - admin.ts: list, evict, collectTokenChunks, serverUsage (the CLI's; the store uses none of it);
 * - calls.ts: what they share — every server call through the guard under its deadline
 *   (lookups `timeoutMs`, 200 ms by default; transfers `transferTimeoutMs` per chunk;
 *   failures open a circuit breaker), the generation clock, the logger;
 * - options.ts, keys.ts (the key layout), scripts.ts (the atomic steps), connections.ts (the two
 *   connections).
 */
import type { FileHandle } from "node:fs/promises";
import { type Logger, silentLogger } from "../../logger.js";
import type {
  EvictOutcome,
  FetchOutcome,
  RemoteCacheId,
  RemoteDeleteTarget,
  RemoteListing,
  RemotePrefixHit,
  RemoteScope,
  RemoteState,
  RemoteStats,
  RemoteTier,
  GetChunkOutcome,
  PutChunksOutcome,
  RemoveOutcome,
  ReserveOutcome,
  ServerUsageOutcome,
  CollectTokenChunksOutcome,
  UploadOutcome,
  UploadTicket,
} from "../types.js";
import { Administration } from "./admin.js";
import { RedisCalls } from "./calls.js";
import { tierClient } from "./connections.js";
import { DEFAULT_CHUNK_BYTES, DEFAULT_TIMEOUT_MS, DEFAULT_TRANSFER_TIMEOUT_MS, DEFAULT_TTL_SECONDS } from "./defaults.js";
import { Deleter } from "./delete.js";
import { Downloader } from "./download.js";
import type { RedisKeys } from "./keys.js";
import { checkOptions, type RedisTierOptions } from "./options.js";
import { TokenChunks } from "./token-chunks.js";
import { Uploader } from "./upload.js";

export type { RedisTierOptions };
export { DEFAULT_CHUNK_BYTES, DEFAULT_TIMEOUT_MS, DEFAULT_TRANSFER_TIMEOUT_MS, DEFAULT_TTL_SECONDS };
export { PENDING_TTL_SECONDS } from "./upload.js";
export { TOMBSTONE_TTL_SECONDS } from "./delete.js";

export class RedisTier implements RemoteTier {
  readonly kind = "redis";
  readonly keys: RedisKeys;
  readonly chunkBytes: number;
  readonly ttlSeconds: number | null;
  readonly timeoutMs: number;
  readonly transferTimeoutMs: number;
  readonly #calls: RedisCalls;
  readonly #uploader: Uploader;
  readonly #downloader: Downloader;
  readonly #deleter: Deleter;
  readonly #administration: Administration;
  readonly #tokenChunks: TokenChunks;
  /** A logger given in the options stays; otherwise the store's replaces the silent default. */
  readonly #loggerGiven: boolean;
  #closed = false;

  constructor(options: RedisTierOptions) {
    const settings = checkOptions(options);
    this.chunkBytes = settings.chunkBytes;
    this.ttlSeconds = settings.ttlSeconds;
    this.timeoutMs = settings.timeoutMs;
    this.transferTimeoutMs = settings.transferTimeoutMs;
    this.#loggerGiven = options.logger !== undefined;
    this.#calls = new RedisCalls(settings, tierClient(options, settings.timeoutMs), options.logger ?? silentLogger);
    this.keys = this.#calls.keys;
    this.#uploader = new Uploader(this.#calls);
    this.#downloader = new Downloader(this.#calls);
    this.#deleter = new Deleter(this.#calls);
    this.#administration = new Administration(this.#calls);
    this.#tokenChunks = new TokenChunks(this.#calls);
    this.#calls.connections.connectInBackground();
  }

  setLogger(logger: Logger): void {
    if (this.#loggerGiven) return;
    this.#calls.logger = logger;
  }

  stats(): RemoteStats {
    return this.#calls.guard.stats();
  }

  reserve(id: RemoteCacheId): Promise<ReserveOutcome> {
    return this.#uploader.reserve(id);
  }

  upload(ticket: UploadTicket, state: RemoteState, file: FileHandle): Promise<UploadOutcome> {
    return this.#uploader.upload(ticket, state, file);
  }

  has(id: RemoteCacheId): Promise<boolean> {
    return this.#downloader.has(id);
  }

  fetchTo(id: RemoteCacheId, tempPath: string): Promise<FetchOutcome> {
    return this.#downloader.fetchTo(id, tempPath);
  }

  lookupPrefix(
    scope: RemoteScope,
    historyKeys: readonly string[],
    options?: { minMessages?: number | undefined; exactAncestor?: boolean | undefined },
  ): Promise<RemotePrefixHit | null> {
    return this.#downloader.lookupPrefix(scope, historyKeys, options);
  }

  putChunks(context: string, ids: readonly string[], read: (id: string) => Promise<Uint8Array | null>): Promise<PutChunksOutcome> {
    return this.#tokenChunks.put(context, ids, read);
  }

  getChunk(context: string, id: string): Promise<GetChunkOutcome> {
    return this.#tokenChunks.get(context, id);
  }

  remove(target: RemoteDeleteTarget): Promise<RemoveOutcome> {
    return this.#deleter.remove(target);
  }

  list(filter?: { cacheKey?: string | undefined; scopeId?: string | null | undefined }): AsyncIterable<RemoteListing> {
    return this.#administration.list(filter);
  }

  evict(state: { id: RemoteCacheId; generation: number }): Promise<EvictOutcome> {
    return this.#administration.evict(state);
  }

  serverUsage(): Promise<ServerUsageOutcome> {
    return this.#administration.serverUsage();
  }

  collectTokenChunks(options: { minIdleMs: number; dryRun: boolean }): Promise<CollectTokenChunksOutcome> {
    return this.#administration.collectTokenChunks(options);
  }

  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    await this.#calls.close();
  }
}

/** `kvkeep/redis`: a remote tier on Redis, Redis Cluster or Valkey, for `openKvCacheStore({ remote })`. */
export function createRedisTier(options: RedisTierOptions): RedisTier {
  return new RedisTier(options);
}
