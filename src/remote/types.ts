/**
 * The remote tier as the store sees it: a shared place (Redis, Valkey, …) where committed
 * states are kept for other machines, behind the local disk tier. A tier moves only bytes
 * and identities: nothing it returns is ever used as a path, and a state it hands over is
 * verified (size, XXH64, identity) before the store installs it through its normal commit.
 *
 * Every method resolves within its deadline whatever the server does: an unreachable,
 * slow or restarted server is an `unavailable` outcome (the local tier carries on), never
 * a rejection a turn has to handle. Rejections are programmer errors only.
 */
import type { Logger } from "../logger.js";
import type { ChunkedState } from "../manifest/format.js";

/** The part of a cache's identity that decides whether its state fits an engine, and whose it is. */
export interface RemoteScope {
  /**
   * The id of the isolation scope (src/keys/scope.ts: a hash, never the scope itself); null
   * or absent for the shared space. States of two scopes never share a key, a record or a
   * prefix index.
   */
  scopeId?: string | null | undefined;
  modelId: string;
  /** The model fingerprint the state was saved with (null when the session gave none). */
  fingerprint: string | null;
  configHash: string;
}

/** One cache, fleet-wide: a scope plus the cache key (a custom name or `auto-<hex>`). */
export interface RemoteCacheId extends RemoteScope {
  cacheKey: string;
}

/** A committed state as the remote tier stores and returns it. */
export interface RemoteState {
  id: RemoteCacheId;
  /** Bytes of the state file. */
  size: number;
  /** XXH64 of the whole file, 16 lowercase hex chars. */
  xxh64: string;
  /** Messages the state covers (the saved count). */
  messageCount: number;
  tokenCount: number | null;
  /**
   * What the state holds, for prefix reuse: the message-key chain of its conversation as
   * the manifest keeps it (`ManifestEntry.chain`: element j is the key of the first j + 1
   * messages, 16 hex chars), or null when unknown.
   */
  chain: readonly string[] | null;
  /** When the state was committed on the machine that made it (ms since the epoch). */
  committedAt: number;
  /**
   * A chunked state (docs/chunks-format.md): the bytes are its tail, and these are the token
   * chunks it is joined from (the manifest entry's `chunks`), each a key of its own in the
   * tier (`putChunks` / `getChunk`). Absent or null: the bytes are the whole state.
   */
  tokenChunks?: ChunkedState | null | undefined;
}

/** A remote state with the generation that ordered its commit among the fleet's. */
export interface RemoteStateRecord extends RemoteState {
  generation: number;
}

/**
 * A commit's place in the fleet's order, taken when the commit happens (without waiting:
 * the store asks for it and goes on). Of two commits of one cache, the later ticket wins;
 * a delete orders against tickets the same way, so an upload whose ticket is older than a
 * delete can never publish.
 */
export interface UploadTicket {
  readonly generation: number;
}

export type ReserveOutcome = { ok: true; ticket: UploadTicket } | { ok: false; reason: "unavailable" };

export type UploadOutcome =
  /** The state is now what the fleet sees for its cache. */
  | { outcome: "published"; bytes: number }
  /** A newer commit of the same cache was already published: this one was dropped whole. */
  | { outcome: "superseded" }
  /** The cache was deleted after this commit's ticket: it is not resurrected. */
  | { outcome: "deleted" }
  /** The local file did not match the state described (changed under the upload): nothing published. */
  | { outcome: "changed" }
  /** The server could not be reached in time, or refused the write (out of memory, no permission). */
  | { outcome: "unavailable" | "failed"; reason: string };

export type FetchOutcome =
  /** The state was written to the temp path and verified: size and XXH64 match its record. */
  | { hit: true; state: RemoteStateRecord }
  /**
   * Nothing usable: `absent` (never uploaded, deleted, or expired), `corrupt` (a chunk is
   * missing, evicted or altered: logged and counted; the temp file is removed),
   * `unavailable` (the server is down or slow, or its circuit breaker is open).
   */
  | { hit: false; reason: "absent" | "corrupt" | "unavailable" };

export type PutChunksOutcome = { ok: true; uploaded: number; bytes: number } | { ok: false; reason: string };
export type GetChunkOutcome = { ok: true; bytes: Buffer | null } | { ok: false; reason: "unavailable" };

/** The longest prefix of a history that some remote state covers. */
export interface RemotePrefixHit {
  /** The remote state's cache key: validated as a safe key, never used as a path as is. */
  cacheKey: string;
  /** How many leading messages of the queried history the state covers. */
  commonMessages: number;
  /** Messages and tokens in the remote state itself (it may go on past the common part). */
  messageCount: number;
  tokenCount: number | null;
  bytes: number;
  generation: number;
}

/** A key's states (every model, or one) in one scope (`scopeId`; the shared space without it), or everything. */
export type RemoteDeleteTarget = { cacheKey: string; modelId?: string | undefined; scopeId?: string | null | undefined } | { all: true };

export type RemoveOutcome = { ok: true; removed: number } | { ok: false; reason: string };

/** A published state as `list()` reports it, with what the server knows of its use. */
export interface RemoteListing extends RemoteStateRecord {
  /**
   * How long ago its bytes were last uploaded or downloaded, as the server tracks it (whole
   * seconds; listing does not count as a use); null when the server does not track idle
   * time (an LFU `maxmemory-policy`).
   */
  idleMs: number | null;
  /** How long until it expires; null when it never does (`ttlSeconds: null`) or its bytes are gone. */
  expiresInMs: number | null;
  /** False when its chunks are gone (evicted by `maxmemory`, or expired): a fetch would miss. */
  whole: boolean;
}

export type EvictOutcome = { ok: true; evicted: boolean } | { ok: false; reason: string };

/** What the server says of its memory, summed over a cluster's masters. */
export interface RemoteServerUsage {
  usedMemoryBytes: number;
  /** The `maxmemory` limit; null when there is none. */
  maxMemoryBytes: number | null;
  /** `maxmemory-policy` (`noeviction`, `allkeys-lru`, …; the first node's on a cluster). */
  policy: string;
  nodes: number;
}

export type ServerUsageOutcome = { ok: true; usage: RemoteServerUsage } | { ok: false; reason: string };

/** What `collectTokenChunks` found and removed (bytes: the memory Redis uses for them, MEMORY USAGE). */
export interface TokenChunkCollection {
  /** Token chunks the tier holds. */
  chunks: number;
  bytes: number;
  /** Of them, the ones no published state names. */
  unreferenced: number;
  unreferencedBytes: number;
  /** Of those, the ones removed (in a dry run: that would be): unused for at least the margin. */
  removed: number;
  removedBytes: number;
  /** Unnamed ones kept because Redis reports no idle time (an LFU maxmemory policy). */
  idleUnknown: number;
}

export type CollectTokenChunksOutcome = { ok: true; collection: TokenChunkCollection } | { ok: false; reason: string };

/** Counters a tier keeps (monotonic since it was created), for logs and metrics. */
export interface RemoteStats {
  /** `closed`: in use; `open`: skipped after failures until a probe succeeds. */
  breaker: "closed" | "open";
  lookups: number;
  hits: number;
  misses: number;
  /** Fetched states that failed verification (missing, evicted or altered chunks). */
  corrupt: number;
  /** Operations that ran out of time. */
  timeouts: number;
  /** Operations that failed for another reason (connection refused, reset, server errors). */
  errors: number;
  /** Operations skipped at once because the breaker was open. */
  skipped: number;
  /** How many times the breaker opened. */
  outages: number;
  uploadsPublished: number;
  uploadsSuperseded: number;
  uploadsDeleted: number;
  uploadsFailed: number;
  bytesUploaded: number;
  bytesDownloaded: number;
  removes: number;
}

/** The tier interface the store drives. */
export interface RemoteTier {
  /** A short name for logs (`"redis"`). */
  readonly kind: string;
  /** Where kvkeep should log; the store gives its own logger when the tier has none. */
  setLogger(logger: Logger): void;
  /** Order a commit happening now among the fleet's commits and deletes (see UploadTicket). */
  reserve(id: RemoteCacheId): Promise<ReserveOutcome>;
  /**
   * Upload the state in `file` (an open handle the caller keeps and closes) under `ticket`,
   * chunk by chunk; the record that makes it visible is written last, in one atomic step,
   * only if the bytes read match `state.size` and `state.xxh64`.
   */
  upload(ticket: UploadTicket, state: RemoteState, file: import("node:fs/promises").FileHandle): Promise<UploadOutcome>;
  /** Whether a state of `id` is published (false when unavailable): a cheap look before a fetch. */
  has(id: RemoteCacheId): Promise<boolean>;
  /** Stream the state of `id` into a new file at `tempPath` (created exclusively) and verify it. */
  fetchTo(id: RemoteCacheId, tempPath: string): Promise<FetchOutcome>;
  /**
   * The remote state covering the longest prefix of a history in `scope`, given the
   * history's keys (element j = key of its first j + 1 messages, as in a manifest chain);
   * null for none (or when unavailable). Only prefixes of at least `minMessages` (default
   * 1) count; with `exactAncestor`, only states whose whole conversation is such a prefix.
   */
  lookupPrefix(
    scope: RemoteScope,
    historyKeys: readonly string[],
    options?: { minMessages?: number | undefined; exactAncestor?: boolean | undefined },
  ): Promise<RemotePrefixHit | null>;
  /**
   * Token chunks (content-addressed: one key per context and id, shared by every state naming
   * it). Uploads the ones the tier lacks — `read` is asked only for those — and refreshes the
   * TTL of the others. Optional: a tier without it carries whole-file states only.
   */
  putChunks?(context: string, ids: readonly string[], read: (id: string) => Promise<Uint8Array | null>): Promise<PutChunksOutcome>;
  /** One token chunk's bytes (unverified: the caller checks them), null when the tier lacks it. */
  getChunk?(context: string, id: string): Promise<GetChunkOutcome>;
  /** Remove remote states and leave a tombstone that refuses uploads ordered before it. */
  remove(target: RemoteDeleteTarget): Promise<RemoveOutcome>;

  // ── administration (the CLI: kvkeep scan | rm | gc --remote); the store uses none of it ──

  /**
   * Every published state, or one cache key's (in the scope `scopeId`, the shared space
   * without it); walks the whole key space without a key. Rejects with REMOTE_UNAVAILABLE
   * when the server cannot be read within the deadline.
   */
  list(filter?: { cacheKey?: string | undefined; scopeId?: string | null | undefined }): AsyncIterable<RemoteListing>;
  /**
   * Drop one state if it is still the commit of `generation` (a newer commit is kept). No
   * tombstone: this is eviction, not a delete, and a later commit may upload it again.
   */
  evict(state: { id: RemoteCacheId; generation: number }): Promise<EvictOutcome>;
  /** The server's memory use and limit. */
  serverUsage(): Promise<ServerUsageOutcome>;
  /**
   * Remove the token chunks no published state names that were unused (not uploaded, found
   * present by an upload or fetched) for at least `minIdleMs`; `dryRun` counts them only.
   * Optional: a tier without token chunks has none to collect.
   */
  collectTokenChunks?(options: { minIdleMs: number; dryRun: boolean }): Promise<CollectTokenChunksOutcome>;
  stats(): RemoteStats;
  /** Release the connection if the tier opened it (a client passed in is left open). */
  close(): Promise<void>;
}
