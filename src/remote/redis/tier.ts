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
import { promises as fs } from "node:fs";
import { fsWriteError, KvKeepError } from "../../errors.js";
import { createXxh64, hashReady } from "../../keys/hash.js";
import { assertCacheKey, assertModelId } from "../../keys/safe-key.js";
import { type Logger, logLine, silentLogger } from "../../logger.js";
import type { Guarded } from "../guard.js";
import { chunkLength, parseRecord, type RemoteRecord } from "../record.js";
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
import { failure, PIPELINE_DEPTH, RedisCalls } from "./calls.js";
import { DEFAULT_CHUNK_BYTES, DEFAULT_TIMEOUT_MS, DEFAULT_TRANSFER_TIMEOUT_MS, DEFAULT_TTL_SECONDS } from "./defaults.js";
import { keyTag, type RedisKeys, scopeTag } from "./keys.js";
import { asText } from "./link.js";
import { checkOptions, type RedisTierOptions, tierClient } from "./options.js";
import { DROP_IF_GENERATION, RAISE_TO, REMOVE } from "./scripts.js";
import { Uploader } from "./upload.js";

export type { RedisTierOptions };
export { PENDING_TTL_SECONDS } from "./upload.js";
export { DEFAULT_CHUNK_BYTES, DEFAULT_TIMEOUT_MS, DEFAULT_TRANSFER_TIMEOUT_MS, DEFAULT_TTL_SECONDS };
/** Tombstones outlive any upload that could still be in flight when its delete ran. */
export const TOMBSTONE_TTL_SECONDS = 24 * 3600;
/** How many distinct candidates a prefix lookup checks before it gives up. */
const PREFIX_CANDIDATES = 3;

/** "ok", "missing" (a chunk is gone), "unavailable", or what was wrong with the bytes. */
type DownloadResult = "ok" | "missing" | "unavailable" | (string & {});

export class RedisTier implements RemoteTier {
  readonly kind = "redis";
  readonly keys: RedisKeys;
  readonly chunkBytes: number;
  readonly ttlSeconds: number | null;
  readonly timeoutMs: number;
  readonly transferTimeoutMs: number;
  readonly #calls: RedisCalls;
  readonly #uploader: Uploader;
  readonly #loggerGiven: boolean;
  #closed = false;
  /** Broken records already reported, so one bad state warns once. */
  readonly #reported = new Set<string>();

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

  // ---- fetch ----------------------------------------------------------------------------

  async has(id: RemoteCacheId): Promise<boolean> {
    assertCacheId(id);
    const record = await this.#readRecord(id);
    return record !== null && record !== "unavailable" && !("error" in record);
  }

  async fetchTo(id: RemoteCacheId, tempPath: string): Promise<FetchOutcome> {
    assertCacheId(id);
    if (typeof tempPath !== "string" || tempPath.length === 0) throw invalidArgument("tempPath", "fetchTo needs a temp file path.");
    const c = this.#calls.counters;
    c.lookups += 1;
    let retried = false;
    for (;;) {
      const record = await this.#readRecord(id);
      if (record === "unavailable") return { hit: false, reason: "unavailable" };
      if (record === null) {
        c.misses += 1;
        return { hit: false, reason: "absent" };
      }
      if ("error" in record) {
        c.misses += 1;
        c.corrupt += 1;
        this.#reportBroken(id, 0, record.error);
        return { hit: false, reason: "corrupt" };
      }
      let got: DownloadResult;
      try {
        got = await this.#download(record, tempPath);
      } catch (error) {
        await fs.unlink(tempPath).catch(() => {});
        throw error instanceof KvKeepError ? error : fsWriteError("writing a state fetched from Redis", error);
      }
      if (got === "ok") {
        c.hits += 1;
        c.bytesDownloaded += record.size;
        void this.#touch(record);
        const { format: _f, chunkBytes: _b, chunks: _c, dataGeneration: _d, ...state } = record;
        return { hit: true, state };
      }
      await fs.unlink(tempPath).catch(() => {});
      if (got === "unavailable") return { hit: false, reason: "unavailable" };
      // A chunk was missing: a newer commit may have replaced the record meanwhile. Once.
      if (got === "missing" && !retried) {
        retried = true;
        const again = await this.#readRecord(id);
        if (again !== "unavailable" && again !== null && !("error" in again) && again.generation !== record.generation) continue;
      }
      c.misses += 1;
      c.corrupt += 1;
      this.#reportBroken(id, record.generation, got === "missing" ? "a chunk is missing (evicted or expired)" : got);
      await this.#calls.lookup("drop broken record", (cmd) =>
        cmd.eval(DROP_IF_GENERATION, { keys: [this.keys.heads(id.cacheKey, id.scopeId)], arguments: [scopeTag(id), String(record.generation)] }),
      );
      return { hit: false, reason: "corrupt" };
    }
  }

  async #readRecord(id: RemoteCacheId): Promise<RemoteRecord | { error: string } | null | "unavailable"> {
    const read = await this.#calls.readRecord("lookup", id);
    return read.ok ? read.value : "unavailable";
  }

  #reportBroken(id: RemoteCacheId, generation: number, reason: string): void {
    const key = `${id.cacheKey}\0${scopeTag(id)}\0${generation}`;
    if (this.#reported.has(key)) return;
    if (this.#reported.size > 1000) this.#reported.clear();
    this.#reported.add(key);
    this.#calls.logger.warn(
      logLine("remote state is broken; treating it as a miss and removing its record", {
        cacheKey: id.cacheKey,
        modelId: id.modelId,
        generation,
        reason,
      }),
    );
  }

  /**
   * Stream the record's chunks into a new file at `tempPath`, checking each chunk's length
   * and the whole file's XXH64. Returns "ok", "missing" (a chunk is gone), "unavailable",
   * or what was wrong.
   */
  async #download(record: RemoteRecord, tempPath: string): Promise<DownloadResult> {
    const dataKey = this.keys.data(record.id, record.xxh64, record.dataGeneration);
    await hashReady;
    const handle = await fs.open(tempPath, "wx", 0o644);
    try {
      const hash = createXxh64();
      const inFlight: Array<Promise<Guarded<unknown>>> = [];
      let next = 0;
      const request = (index: number): Promise<Guarded<unknown>> =>
        this.#calls.transfer("fetch chunk", (c) => c.hGet(dataKey, String(index)), true);
      for (let index = 0; index < record.chunks; index++) {
        while (next < record.chunks && inFlight.length < PIPELINE_DEPTH) inFlight.push(request(next++));
        const attempt = await inFlight.shift()!;
        if (!attempt.ok) {
          await Promise.all(inFlight.splice(0));
          return attempt.reason === "error" ? `the server refused a chunk read: ${String(attempt.error)}` : "unavailable";
        }
        const chunk = attempt.value;
        if (chunk === null || chunk === undefined) {
          await Promise.all(inFlight.splice(0));
          return "missing";
        }
        const expected = chunkLength(record.size, record.chunkBytes, index);
        if (!Buffer.isBuffer(chunk) || chunk.length !== expected) {
          await Promise.all(inFlight.splice(0));
          return `chunk ${index} has ${Buffer.isBuffer(chunk) ? chunk.length : "no"} bytes, not ${expected}`;
        }
        hash.update(chunk);
        let written = 0;
        while (written < chunk.length) {
          const { bytesWritten } = await handle.write(chunk, written, chunk.length - written, index * record.chunkBytes + written);
          written += bytesWritten;
        }
      }
      const digest = hash.digestHex();
      if (digest !== record.xxh64) return `checksum ${digest} is not the record's ${record.xxh64}`;
      return "ok";
    } finally {
      await handle.close();
    }
  }

  /** A download is a use: keep the state as long again (best effort, not awaited by a turn). */
  async #touch(record: RemoteRecord): Promise<void> {
    if (this.ttlSeconds === null) return;
    const ttl = this.ttlSeconds;
    await this.#calls.transfer("refresh ttl", async (c) => {
      await Promise.all([
        c.expire(this.keys.heads(record.id.cacheKey, record.id.scopeId), ttl),
        c.expire(this.keys.data(record.id, record.xxh64, record.dataGeneration), ttl),
      ]);
    });
  }

  // ---- prefix lookup --------------------------------------------------------------------

  async lookupPrefix(
    scope: RemoteScope,
    historyKeys: readonly string[],
    options?: { minMessages?: number | undefined; exactAncestor?: boolean | undefined },
  ): Promise<RemotePrefixHit | null> {
    assertCacheId({ ...scope, cacheKey: "x" });
    if (!Array.isArray(historyKeys) || historyKeys.some((k) => typeof k !== "string")) {
      throw invalidArgument("historyKeys", "historyKeys must be the history's message-key chain (keys 1…n).");
    }
    const minMessages = Math.max(1, options?.minMessages ?? 1);
    const n = historyKeys.length;
    if (n < minMessages) return null;
    const c = this.#calls.counters;
    c.lookups += 1;
    // Fields for the longest prefixes first: key j holds the first j + 1 messages.
    const indexes: number[] = [];
    for (let j = n - 1; j >= minMessages - 1; j--) indexes.push(j);
    const read = await this.#calls.lookup("read prefix index", (cmd) =>
      cmd.hmGet(this.keys.prefixIndex(scope), indexes.map((j) => historyKeys[j]!)),
    );
    if (!read.ok) return null;
    const values = Array.isArray(read.value) ? read.value : [];
    const tried = new Set<string>();
    for (let i = 0; i < indexes.length && tried.size < PREFIX_CANDIDATES; i++) {
      const text = asText(values[i]);
      for (const cacheKey of text === null ? [] : parsePrefixEntry(text)) {
        if (tried.has(cacheKey) || tried.size >= PREFIX_CANDIDATES) continue;
        tried.add(cacheKey);
        const record = await this.#readRecord({ ...scope, cacheKey });
        if (record === "unavailable") return null;
        if (record === null || "error" in record || !record.chain) continue;
        // Chain keys are cumulative: equal at j means equal up to j. The state may share
        // more than the field it was found under (the index keeps a few per field).
        let common = Math.min(n, record.chain.length);
        while (common >= minMessages && record.chain[common - 1] !== historyKeys[common - 1]) common -= 1;
        if (common < minMessages) continue;
        if (options?.exactAncestor && record.messageCount !== common) continue;
        c.hits += 1;
        return {
          cacheKey,
          commonMessages: common,
          messageCount: record.messageCount,
          tokenCount: record.tokenCount,
          bytes: record.size,
          generation: record.generation,
        };
      }
    }
    c.misses += 1;
    return null;
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

/** A prefix index field: the cache keys of states covering that prefix, newest first (only safe keys kept). */
function parsePrefixEntry(text: string): string[] {
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch {
    return [];
  }
  if (!Array.isArray(raw)) return [];
  return raw.filter((k): k is string => {
    try {
      assertCacheKey(k);
      return true;
    } catch {
      return false;
    }
  });
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
