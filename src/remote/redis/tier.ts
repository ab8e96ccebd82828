/**
 * The Redis tier (`kvkeep/redis`): committed states kept in Redis, Redis Cluster or Valkey
 * for the other machines of a fleet. See keys.ts for the layout and scripts.ts for the
 * atomic steps. In short:
 *
 * - upload: chunks go into the upload's own data key (content-addressed by the state's
 *   XXH64, tagged with its generation), then one script publishes the record — only if no
 *   delete and no newer commit came first, and only with every chunk present. A writer
 *   killed mid-upload leaves a data key nobody references, which expires.
 * - fetch: the record (checked strictly), then chunk by chunk into a temp file, hashed on
 *   the way; any missing, short or altered chunk is a miss (logged), never a torn file.
 * - lookups have `timeoutMs` (200 ms by default), transfers `transferTimeoutMs` per chunk;
 *   failures open a circuit breaker (guard.ts).
 */
import type { FileHandle } from "node:fs/promises";
import { KvKeepError } from "../../errors.js";
import { assertCacheKey, assertModelId } from "../../keys/safe-key.js";
import { type Logger, silentLogger } from "../../logger.js";
import { parseRecord, type RemoteRecord } from "../record.js";
import type {
  EvictOutcome,
  FetchOutcome,
  RemoteCacheId,
  RemoteDeleteTarget,
  RemoteListing,
  RemotePrefixHit,
  RemoteScope,
  RemoteServerUsage,
  RemoteState,
  RemoteStats,
  RemoteTier,
  RemoveOutcome,
  ReserveOutcome,
  ServerUsageOutcome,
  UploadOutcome,
  UploadTicket,
} from "../types.js";
import { assertCacheId, assertScopeId, invalidArgument } from "./arguments.js";
import { failure, RedisCalls } from "./calls.js";
import { DEFAULT_CHUNK_BYTES, DEFAULT_TIMEOUT_MS, DEFAULT_TRANSFER_TIMEOUT_MS, DEFAULT_TTL_SECONDS } from "./defaults.js";
import { keyTag, type RedisKeys, scopeTag } from "./keys.js";
import { asText } from "./link.js";
import { checkOptions, type RedisTierOptions, tierClient } from "./options.js";
import { DROP_IF_GENERATION, RAISE_TO, REMOVE } from "./scripts.js";
import { Uploader } from "./upload.js";
import { Downloader } from "./download.js";

export type { RedisTierOptions };
export { PENDING_TTL_SECONDS } from "./upload.js";
export { DEFAULT_CHUNK_BYTES, DEFAULT_TIMEOUT_MS, DEFAULT_TRANSFER_TIMEOUT_MS, DEFAULT_TTL_SECONDS };
/** Tombstones outlive any upload that could still be in flight when its delete ran. */
export const TOMBSTONE_TTL_SECONDS = 24 * 3600;
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
  readonly #loggerGiven: boolean;
  #closed = false;

  constructor(options: RedisTierOptions) {
    const settings = checkOptions(options);
    this.chunkBytes = settings.chunkBytes;
    this.ttlSeconds = settings.ttlSeconds;
    this.timeoutMs = settings.timeoutMs;
    this.transferTimeoutMs = settings.transferTimeoutMs;
    this.#loggerGiven = options.logger !== undefined;
    this.#calls = new RedisCalls(settings, tierClient(options, settings), options.logger ?? silentLogger);
    this.keys = this.#calls.keys;
    this.#uploader = new Uploader(this.#calls);
    this.#downloader = new Downloader(this.#calls);
    this.#calls.link.connectInBackground();
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

  // ---- delete ---------------------------------------------------------------------------

  async remove(target: RemoteDeleteTarget): Promise<RemoveOutcome> {
    if (!target || typeof target !== "object") throw invalidArgument("target", "remove needs { cacheKey, modelId? } or { all: true }.");
    const generation = await this.#calls.nextGeneration("control");
    if (!generation.ok) return { ok: false, reason: failure(generation, "reserving a generation").reason };
    const outcome = "all" in target ? await this.#removeAll(generation.value) : await this.#removeKey(target, generation.value);
    if (outcome.ok) this.#calls.counters.removes += outcome.removed;
    return outcome;
  }

  async #removeKey(target: { cacheKey: string; modelId?: string | undefined; scopeId?: string | null | undefined }, generation: number): Promise<RemoveOutcome> {
    assertCacheKey(target.cacheKey, "cacheKey");
    if (target.modelId !== undefined) assertModelId(target.modelId);
    assertScopeId(target.scopeId);
    // One scope's key: its heads and tombstones are its own (a scoped key tag).
    const removed = await this.#calls.control("delete", (c) =>
      c.eval(REMOVE, {
        keys: [this.keys.heads(target.cacheKey, target.scopeId), this.keys.tombs(target.cacheKey, target.scopeId)],
        arguments: [String(generation), target.modelId ?? "", String(TOMBSTONE_TTL_SECONDS)],
      }),
    );
    if (!removed.ok) return { ok: false, reason: failure(removed, "deleting").reason };
    const records = (Array.isArray(removed.value) ? removed.value : []).map(asText).filter((t): t is string => t !== null);
    for (const text of records) await this.#calls.unlinkDataOf(text);
    return { ok: true, removed: records.length };
  }

  async #removeAll(generation: number): Promise<RemoveOutcome> {
    const keep = new Set([this.keys.clock, this.keys.deletedAll]);
    const done = await this.#calls.guard.run("delete everything", Math.max(this.transferTimeoutMs, 60_000), async (signal) => {
      await this.#calls.link.ready();
      const c = this.#calls.link.commands(signal, this.transferTimeoutMs);
      // Recorded first: an upload ordered before it that publishes after this point sees it.
      await c.eval(RAISE_TO, { keys: [this.keys.deletedAll], arguments: [String(generation)] });
      let removed = 0;
      for await (const key of this.#calls.link.scan(this.keys.everything)) {
        if (keep.has(key)) continue;
        await c.unlink(key);
        if (key.endsWith(":heads")) removed += 1;
      }
      return removed;
    });
    return done.ok ? { ok: true, removed: done.value } : { ok: false, reason: failure(done, "deleting everything").reason };
  }

  // ---- administration (kvkeep scan | gc --remote) ----------------------------------------

  async *list(filter?: { cacheKey?: string | undefined; scopeId?: string | null | undefined }): AsyncIterable<RemoteListing> {
    let headsKeys: string[];
    if (filter?.cacheKey !== undefined) {
      assertCacheKey(filter.cacheKey, "cacheKey");
      assertScopeId(filter.scopeId);
      headsKeys = [this.keys.heads(filter.cacheKey, filter.scopeId)];
    } else {
      headsKeys = await this.#scanKeys(this.keys.headsPattern, "hash");
    }
    for (const key of headsKeys) {
      const read = await this.#calls.transfer("list records", (c) => c.hGetAll(key));
      if (!read.ok) throw listingFailed(failure(read, `reading ${key}`).reason);
      const records: RemoteRecord[] = [];
      for (const [field, value] of recordPairs(read.value)) {
        const record = parseRecord(value);
        if ("error" in record) continue;
        // Filed where it belongs, or it is not trusted (not even listed).
        if (key !== this.keys.heads(record.id.cacheKey, record.id.scopeId) || field !== scopeTag(record.id)) continue;
        records.push(record);
      }
      if (records.length === 0) continue;
      // About each state's data key, with commands that do not count as a use of it.
      const facts = await this.#calls.transfer("inspect states", (c) =>
        Promise.all(
          records.map(async (r) => {
            const dataKey = this.keys.data(r.id, r.xxh64, r.dataGeneration);
            // An LFU maxmemory policy answers OBJECT IDLETIME with an error: idle time unknown.
            const [pttl, idle] = await Promise.all([c.pTTL(dataKey), c.objectIdleTime(dataKey).catch(() => null)]);
            return { pttl: Number(pttl), idle: idle === null ? null : Number(idle) };
          }),
        ),
      );
      if (!facts.ok) throw listingFailed(failure(facts, `inspecting the states of ${key}`).reason);
      for (const [i, record] of records.entries()) {
        const { pttl, idle } = facts.value[i]!;
        const { format: _f, chunkBytes: _b, chunks: _c, dataGeneration: _d, ...state } = record;
        const whole = pttl !== -2; // -2: the data key is gone
        yield {
          ...state,
          idleMs: whole && idle !== null && Number.isFinite(idle) ? idle * 1000 : null,
          expiresInMs: whole && pttl >= 0 ? pttl : null,
          whole,
        };
      }
    }
  }

  /** Every key matching `pattern`, each SCAN step under the transfer deadline. */
  async #scanKeys(pattern: string, type?: string): Promise<string[]> {
    const keys: string[] = [];
    const iterator = this.#calls.link.scan(pattern, type)[Symbol.asyncIterator]();
    for (let first = true; ; first = false) {
      const step = await this.#calls.guard.run("list keys", this.transferTimeoutMs, async () => {
        if (first) await this.#calls.link.ready();
        return iterator.next();
      });
      if (!step.ok) {
        void iterator.return?.(undefined)?.catch(() => {});
        throw listingFailed(failure(step, "scanning the keys").reason);
      }
      if (step.value.done) return keys;
      keys.push(step.value.value);
    }
  }

  async evict(state: { id: RemoteCacheId; generation: number }): Promise<EvictOutcome> {
    if (!state || typeof state !== "object") throw invalidArgument("state", "evict needs { id, generation } as list() gives them.");
    assertCacheId(state.id);
    if (!Number.isSafeInteger(state.generation) || state.generation <= 0) throw invalidArgument("generation", "evict needs the state's generation.");
    const current = await this.#calls.readRecord("control", state.id);
    if (!current.ok) return { ok: false, reason: failure(current, "reading the record").reason };
    const record = current.value;
    if (record === null || "error" in record || record.generation !== state.generation) return { ok: true, evicted: false };
    const heads = this.keys.heads(state.id.cacheKey, state.id.scopeId);
    const dataKey = this.keys.data(record.id, record.xxh64, record.dataGeneration);
    const dropped = await this.#calls.control("evict", (c) =>
      c.eval(DROP_IF_GENERATION, { keys: [heads, dataKey], arguments: [scopeTag(state.id), String(state.generation)] }),
    );
    if (!dropped.ok) return { ok: false, reason: failure(dropped, "evicting").reason };
    return { ok: true, evicted: Number(asText(dropped.value)) === 1 };
  }

  async serverUsage(): Promise<ServerUsageOutcome> {
    // INFO is about a node, not a key: asked of each master of a cluster.
    const read = await this.#calls.guard.run("read server memory", this.#calls.timeoutOf("control"), async () => {
      await this.#calls.link.ready();
      const nodes = await this.#calls.link.nodes();
      return Promise.all(nodes.map(async (node) => asText(await node.info("memory")) ?? ""));
    });
    if (!read.ok) return { ok: false, reason: failure(read, "reading INFO memory").reason };
    return { ok: true, usage: sumMemoryInfo(read.value) };
  }

  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    await this.#calls.close();
  }
}

function listingFailed(reason: string): KvKeepError {
  return new KvKeepError("REMOTE_UNAVAILABLE", `listing the remote tier failed (${reason}); is Redis reachable?`);
}

/** `INFO memory` replies of every node, summed (the policy is the first node's). */
function sumMemoryInfo(replies: readonly string[]): RemoteServerUsage {
  const field = (text: string, name: string): string | undefined => new RegExp(`^${name}:(.*)$`, "m").exec(text)?.[1]?.trim();
  let used = 0;
  let max = 0;
  let unlimited = false;
  for (const text of replies) {
    used += Number(field(text, "used_memory") ?? 0) || 0;
    const limit = Number(field(text, "maxmemory") ?? 0) || 0;
    if (limit === 0) unlimited = true;
    max += limit;
  }
  return {
    usedMemoryBytes: used,
    maxMemoryBytes: unlimited || replies.length === 0 ? null : max,
    policy: (replies.length > 0 ? field(replies[0]!, "maxmemory_policy") : undefined) ?? "unknown",
    nodes: replies.length,
  };
}

/** HGETALL's reply as [field, value] text pairs (RESP3 gives an object or Map, RESP2 a flat list). */
function recordPairs(reply: unknown): Array<[string, string]> {
  const pairs: Array<[string, string]> = [];
  const push = (f: unknown, v: unknown): void => {
    const field = asText(f);
    const value = asText(v);
    if (field !== null && value !== null) pairs.push([field, value]);
  };
  if (reply instanceof Map) for (const [f, v] of reply) push(f, v);
  else if (Array.isArray(reply)) for (let i = 0; i + 1 < reply.length; i += 2) push(reply[i], reply[i + 1]);
  else if (reply && typeof reply === "object") for (const [f, v] of Object.entries(reply)) push(f, v);
  return pairs;
}

/** `kvkeep/redis`: a remote tier on Redis, Redis Cluster or Valkey, for `openKvCacheStore({ remote })`. */
export function createRedisTier(options: RedisTierOptions): RedisTier {
  return new RedisTier(options);
}

export { keyTag, scopeTag };
