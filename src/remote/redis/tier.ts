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
import { createClient, type RedisClientOptions } from "redis";
import { crashPoint } from "../../durable/crash-points.js";
import { fsWriteError, KvKeepError } from "../../errors.js";
import { createXxh64, hashReady } from "../../keys/hash.js";
import { assertCacheKey, assertConfigHash, assertModelId } from "../../keys/safe-key.js";
import { type Logger, logLine, silentLogger } from "../../logger.js";
import { type Guarded, RemoteGuard } from "../guard.js";
import { chunkCount, chunkLength, MAX_CHUNK_BYTES, parseRecord, RECORD_FORMAT, type RemoteRecord, serializeRecord } from "../record.js";
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
import { DEFAULT_CHUNK_BYTES, DEFAULT_TIMEOUT_MS, DEFAULT_TRANSFER_TIMEOUT_MS, DEFAULT_TTL_SECONDS } from "./defaults.js";
import { assertKeyPrefix, DEFAULT_KEY_PREFIX, keyTag, RedisKeys, scopeTag } from "./keys.js";
import { SCOPE_ID_PATTERN } from "../../keys/scope.js";
import { asText, classifyRedisError, type NodeRedisClientLike, RedisLink } from "./link.js";
import { DROP_IF_GENERATION, INDEX_PREFIXES, NEXT_GENERATION, PUBLISH, REMOVE } from "./scripts.js";

export interface RedisTierOptions {
  /**
   * `redis://[user[:password]@]host[:port][/db]`, or `rediss://…` for TLS. kvkeep creates
   * and owns the client (closed by `store.close()`). Give `url` or `client`, not both.
   */
  url?: string | undefined;
  /**
   * A node-redis client you created — `createClient(…)`, or `createCluster({ rootNodes })`
   * for Redis Cluster — with your own auth, TLS and reconnect settings. kvkeep connects it
   * if it is not open yet and never closes it.
   */
  client?: NodeRedisClientLike | undefined;
  /**
   * Options passed to node-redis `createClient` with `url`: `username`/`password` (ACL
   * user), `socket: { tls: true, ca, cert, key, servername }`, `database`, …
   */
  clientOptions?: RedisClientOptions | undefined;
  /** Every key starts with this (default `"kvkeep:"`): one prefix per tenant isolates them. */
  keyPrefix?: string | undefined;
  /** Bytes per chunk (default 1 MiB; 4 KiB to 256 MiB). */
  chunkBytes?: number | undefined;
  /**
   * States (and the prefix index) expire this long after their last upload or download.
   * Default 7 days; `null` keeps them until deleted or evicted by Redis's `maxmemory` policy.
   */
  ttlSeconds?: number | null | undefined;
  /** Deadline of every lookup on a turn's path (record, prefix, generation): default 200 ms. */
  timeoutMs?: number | undefined;
  /** Deadline of each chunk transfer and each upload step: default 10 s. */
  transferTimeoutMs?: number | undefined;
  /** Where the tier logs (default: the store's logger). */
  logger?: Logger | undefined;
}

export { DEFAULT_CHUNK_BYTES, DEFAULT_TIMEOUT_MS, DEFAULT_TRANSFER_TIMEOUT_MS, DEFAULT_TTL_SECONDS };
/** An upload's data key lives this long until its record is published (a killed writer's expires). */
export const PENDING_TTL_SECONDS = 3600;
/** Tombstones outlive any upload that could still be in flight when its delete ran. */
export const TOMBSTONE_TTL_SECONDS = 24 * 3600;
/** Chunk commands kept in flight at once during a transfer. */
const PIPELINE_DEPTH = 4;
/** How many distinct candidates a prefix lookup checks before it gives up. */
const PREFIX_CANDIDATES = 3;

function invalid(argument: string, message: string): KvKeepError {
  return new KvKeepError("INVALID_ARGUMENT", message, { argument });
}

function positiveInt(value: unknown, argument: string, min: number, max: number): number {
  if (typeof value !== "number" || !Number.isSafeInteger(value) || value < min || value > max) {
    throw invalid(argument, `${argument} must be an integer from ${min} to ${max}.`);
  }
  return value;
}

function assertCacheId(id: RemoteCacheId): void {
  if (!id || typeof id !== "object") throw invalid("id", "a remote cache id is { modelId, fingerprint, configHash, cacheKey }.");
  assertModelId(id.modelId);
  assertConfigHash(id.configHash);
  assertCacheKey(id.cacheKey, "cacheKey");
  if (!(id.fingerprint === null || typeof id.fingerprint === "string")) {
    throw invalid("fingerprint", "fingerprint must be a string or null.");
  }
  assertScopeId(id.scopeId);
}

function assertScopeId(scopeId: unknown): void {
  if (scopeId != null && !(typeof scopeId === "string" && SCOPE_ID_PATTERN.test(scopeId))) {
    throw invalid("scopeId", "scopeId must be a scope's id (32 hex characters, from the store) or null for the shared space.");
  }
}

/** "ok", "missing" (a chunk is gone), "unavailable", or what was wrong with the bytes. */
type DownloadResult = "ok" | "missing" | "unavailable" | (string & {});

type Failed = Extract<UploadOutcome, { outcome: "unavailable" | "failed" }>;

function failure(attempt: Exclude<Guarded<unknown>, { ok: true }>, what: string): Failed {
  const detail = attempt.error instanceof Error ? attempt.error.message : attempt.reason;
  return { outcome: attempt.reason === "error" ? "failed" : "unavailable", reason: `${what}: ${detail}` };
}

export class RedisTier implements RemoteTier {
  readonly kind = "redis";
  readonly keys: RedisKeys;
  readonly chunkBytes: number;
  readonly ttlSeconds: number | null;
  readonly timeoutMs: number;
  readonly transferTimeoutMs: number;
  readonly #link: RedisLink;
  readonly #guard: RemoteGuard;
  #logger: Logger;
  #loggerGiven: boolean;
  #closed = false;
  /** Broken records already reported, so one bad state warns once. */
  readonly #reported = new Set<string>();

  constructor(options: RedisTierOptions) {
    if (!options || typeof options !== "object") throw invalid("options", "createRedisTier needs { url } or { client }.");
    const { url, client } = options;
    if ((url === undefined) === (client === undefined)) {
      throw invalid("url", "createRedisTier needs exactly one of url (kvkeep creates the client) or client (yours).");
    }
    if (url !== undefined && (typeof url !== "string" || !/^rediss?:\/\//.test(url))) {
      throw invalid("url", "url must look like redis://host:6379 or rediss://host:6380.");
    }
    if (client !== undefined && (typeof client !== "object" || typeof (client as NodeRedisClientLike).withCommandOptions !== "function")) {
      throw invalid("client", "client must be a node-redis client (createClient or createCluster from the redis package).");
    }
    const prefix = options.keyPrefix ?? DEFAULT_KEY_PREFIX;
    assertKeyPrefix(prefix);
    this.keys = new RedisKeys(prefix);
    this.chunkBytes = positiveInt(options.chunkBytes ?? DEFAULT_CHUNK_BYTES, "chunkBytes", 4096, MAX_CHUNK_BYTES);
    this.ttlSeconds =
      options.ttlSeconds === null ? null : positiveInt(options.ttlSeconds ?? DEFAULT_TTL_SECONDS, "ttlSeconds", 1, 2 ** 31 - 1);
    this.timeoutMs = positiveInt(options.timeoutMs ?? DEFAULT_TIMEOUT_MS, "timeoutMs", 1, 600_000);
    this.transferTimeoutMs = positiveInt(options.transferTimeoutMs ?? DEFAULT_TRANSFER_TIMEOUT_MS, "transferTimeoutMs", 1, 3_600_000);
    this.#logger = options.logger ?? silentLogger;
    this.#loggerGiven = options.logger !== undefined;

    const onError = (error: unknown): void => {
      // Logged only during an outage the guard has warned about (once). Otherwise the client
      // reconnects on its own and no operation fails — e.g. the "Connection timeout" its
      // connect timer reports when a model load held the event loop while the socket
      // connected — and a line at every start would only alarm. An error that does fail an
      // operation reaches the guard, which warns with it.
      if (this.#guard?.state === "open") this.#logger.debug(logLine("redis client error", { error }));
    };
    if (url !== undefined) {
      const clientOptions = options.clientOptions ?? {};
      const created = createClient({
        ...clientOptions,
        url,
        // Fail at once while disconnected instead of queueing: the guard's deadline and
        // breaker decide, and nothing piles up in memory during an outage.
        disableOfflineQueue: true,
        socket: {
          connectTimeout: Math.max(1000, this.timeoutMs * 5),
          reconnectStrategy: (retries: number) => Math.min(50 * 2 ** retries, 2000),
          ...clientOptions.socket,
        },
      } as RedisClientOptions);
      this.#link = new RedisLink(created as unknown as NodeRedisClientLike, true, onError);
    } else {
      this.#link = new RedisLink(client!, false, onError);
    }
    this.#guard = new RemoteGuard({
      kind: "redis",
      classify: classifyRedisError,
      probeTimeoutMs: Math.max(this.timeoutMs, 1000),
      probe: async (signal) => {
        await this.#link.ready();
        await this.#link.commands(signal, Math.max(this.timeoutMs, 1000)).exists(this.keys.clock);
      },
    });
    this.#guard.logger = this.#logger;
    this.#link.connectInBackground();
  }

  setLogger(logger: Logger): void {
    if (this.#loggerGiven) return;
    this.#logger = logger;
    this.#guard.logger = logger;
  }

  stats(): RemoteStats {
    return this.#guard.stats();
  }

  /** One guarded round trip with the lookup deadline (text replies). */
  #lookup<T>(label: string, op: (c: ReturnType<RedisLink["commands"]>) => Promise<T>): Promise<Guarded<T>> {
    return this.#guard.run(label, this.timeoutMs, async (signal) => {
      await this.#link.ready();
      return op(this.#link.commands(signal, this.timeoutMs));
    });
  }

  /** One guarded round trip with the transfer deadline, on the bulk connection. */
  #transfer<T>(label: string, op: (c: ReturnType<RedisLink["commands"]>) => Promise<T>, binary = false): Promise<Guarded<T>> {
    return this.#guard.run(label, this.transferTimeoutMs, async (signal) => {
      await this.#link.ready("bulk");
      return op(this.#link.commands(signal, this.transferTimeoutMs, { binary, lane: "bulk" }));
    });
  }

  /** One guarded round trip with the deadline of explicit deletes (a caller waits, but not for long). */
  get #controlTimeoutMs(): number {
    return Math.max(this.timeoutMs * 5, 1000);
  }

  #control<T>(label: string, op: (c: ReturnType<RedisLink["commands"]>) => Promise<T>): Promise<Guarded<T>> {
    const timeoutMs = this.#controlTimeoutMs;
    return this.#guard.run(label, timeoutMs, async (signal) => {
      await this.#link.ready();
      return op(this.#link.commands(signal, timeoutMs));
    });
  }

  async #nextGeneration(timeout: "lookup" | "control"): Promise<Guarded<number>> {
    const run = timeout === "lookup" ? this.#lookup.bind(this) : this.#control.bind(this);
    const attempt = await run("reserve a generation", (c) => c.eval(NEXT_GENERATION, { keys: [this.keys.clock], arguments: [] }));
    if (!attempt.ok) return attempt;
    const generation = Number(asText(attempt.value));
    if (!Number.isSafeInteger(generation) || generation <= 0) {
      return { ok: false, reason: "error", error: new Error(`the generation clock answered ${String(attempt.value)}`) };
    }
    return { ok: true, value: generation };
  }

  async reserve(id: RemoteCacheId): Promise<ReserveOutcome> {
    assertCacheId(id);
    const attempt = await this.#nextGeneration("lookup");
    return attempt.ok ? { ok: true, ticket: Object.freeze({ generation: attempt.value }) } : { ok: false, reason: "unavailable" };
  }

  // ---- upload ---------------------------------------------------------------------------

  async upload(ticket: UploadTicket, state: RemoteState, file: FileHandle): Promise<UploadOutcome> {
    assertCacheId(state.id);
    if (!ticket || !Number.isSafeInteger(ticket.generation) || ticket.generation <= 0) {
      throw invalid("ticket", "upload needs the ticket reserve() returned.");
    }
    const outcome = await this.#upload(ticket.generation, state, file);
    const c = this.#guard.counters;
    if (outcome.outcome === "published") {
      c.uploadsPublished += 1;
      c.bytesUploaded += outcome.bytes;
    } else if (outcome.outcome === "superseded") c.uploadsSuperseded += 1;
    else if (outcome.outcome === "deleted") c.uploadsDeleted += 1;
    else c.uploadsFailed += 1;
    if (outcome.outcome === "failed" || outcome.outcome === "changed") {
      this.#logger.debug(logLine("remote upload not published", { cacheKey: state.id.cacheKey, ...outcome }));
    }
    return outcome;
  }

  async #upload(generation: number, state: RemoteState, file: FileHandle): Promise<UploadOutcome> {
    const { id } = state;
    const heads = this.keys.heads(id.cacheKey, id.scopeId);
    const field = scopeTag(id);
    const read = await this.#transfer("read record", (c) => c.hGet(heads, field));
    if (!read.ok) return failure(read, "reading the current record");
    const currentText = asText(read.value);
    const current = currentText === null ? null : parseRecord(currentText, id);
    const valid = current !== null && !("error" in current) ? current : null;
    if (valid && valid.generation >= generation) return { outcome: "superseded" };

    // Identical bytes already published: point the new record at them, upload nothing.
    const reuse = valid !== null && valid.xxh64 === state.xxh64 && valid.size === state.size;
    const dataGeneration = reuse ? valid.dataGeneration : generation;
    const chunkBytes = reuse ? valid.chunkBytes : this.chunkBytes;
    const dataKey = this.keys.data(id, state.xxh64, dataGeneration);
    let bytes = 0;
    if (!reuse) {
      const sent = await this.#sendChunks(dataKey, state, file);
      if (sent !== null) {
        await this.#unlinkQuietly(dataKey);
        return sent;
      }
      bytes = state.size;
    }
    const record: RemoteRecord = {
      format: RECORD_FORMAT,
      id: { scopeId: id.scopeId ?? null, modelId: id.modelId, fingerprint: id.fingerprint, configHash: id.configHash, cacheKey: id.cacheKey },
      size: state.size,
      xxh64: state.xxh64,
      messageCount: state.messageCount,
      tokenCount: state.tokenCount,
      chain: state.chain ? [...state.chain] : null,
      committedAt: state.committedAt,
      generation,
      chunkBytes,
      chunks: chunkCount(state.size, chunkBytes),
      dataGeneration,
    };
    const published = await this.#transfer("publish", (c) =>
      c.eval(PUBLISH, {
        keys: [heads, this.keys.tombs(id.cacheKey, id.scopeId), dataKey],
        arguments: [field, String(generation), serializeRecord(record), String(record.chunks), String(this.ttlSeconds ?? 0), id.modelId],
      }),
    );
    // A publish that timed out may have landed: keep the data (it expires if not).
    if (!published.ok) return failure(published, "publishing");
    const [verdict, previousText] = (Array.isArray(published.value) ? published.value : []).map(asText);
    if (verdict !== "published") {
      if (!reuse) await this.#unlinkQuietly(dataKey);
      if (verdict === "superseded") return { outcome: "superseded" };
      if (verdict === "deleted") return { outcome: "deleted" };
      return { outcome: "failed", reason: `publish refused: ${verdict ?? "no answer"} (chunks evicted during the upload?)` };
    }
    if (previousText) await this.#unlinkDataOf(previousText, dataKey);

    // A delete of everything runs in another slot: check it after publishing. A delete that
    // started before this check either sees the record in its scan, or is seen here.
    const all = await this.#transfer("check delete-all", (c) => c.get(this.keys.deletedAll));
    if (all.ok && Number(asText(all.value) ?? 0) >= generation) {
      await this.#transfer("drop", (c) => c.eval(DROP_IF_GENERATION, { keys: [heads], arguments: [field, String(generation)] }));
      if (!reuse) await this.#unlinkQuietly(dataKey);
      return { outcome: "deleted" };
    }
    if (record.chain && record.chain.length > 0) await this.#indexPrefixes(record);
    return { outcome: "published", bytes };
  }

  /** Read `file` chunk by chunk into `dataKey`, hashing on the way. Null when all chunks were sent and match `state`. */
  async #sendChunks(dataKey: string, state: RemoteState, file: FileHandle): Promise<UploadOutcome | null> {
    const stat = await file.stat();
    if (stat.size !== state.size) return { outcome: "changed" };
    await hashReady; // stream through WebAssembly (the fallback keeps every chunk until the end)
    const hash = createXxh64();
    const chunks = chunkCount(state.size, this.chunkBytes);
    const inFlight: Array<Promise<Guarded<unknown>>> = [];
    let failed: Failed | null = null;
    let changed = false;
    for (let index = 0; index < chunks; index++) {
      const length = chunkLength(state.size, this.chunkBytes, index);
      const buffer = Buffer.allocUnsafe(length);
      const { bytesRead } = await file.read(buffer, 0, length, index * this.chunkBytes);
      if (bytesRead !== length) {
        changed = true;
        break;
      }
      hash.update(buffer);
      const refreshTtl = index % 16 === 0;
      inFlight.push(
        this.#transfer("send chunk", async (c) => {
          const sent = c.hSet(dataKey, String(index), buffer);
          if (refreshTtl) await c.expire(dataKey, PENDING_TTL_SECONDS);
          await sent;
          await crashPoint("remote:after-chunk");
        }),
      );
      if (inFlight.length >= PIPELINE_DEPTH) {
        const attempt = await inFlight.shift()!;
        if (!attempt.ok) {
          failed = failure(attempt, "sending a chunk");
          break;
        }
      }
    }
    for (const attempt of await Promise.all(inFlight.splice(0))) {
      if (!attempt.ok) failed ??= failure(attempt, "sending a chunk");
    }
    if (failed) return failed;
    await crashPoint("remote:before-publish");
    if (changed || hash.digestHex() !== state.xxh64) return { outcome: "changed" };
    return null;
  }

  async #indexPrefixes(record: RemoteRecord): Promise<void> {
    const chain = record.chain!;
    await this.#transfer("index prefixes", (c) =>
      c.eval(INDEX_PREFIXES, {
        keys: [this.keys.prefixIndex(record.id)],
        arguments: [record.id.cacheKey, String(this.ttlSeconds ?? 0), ...chain],
      }),
    );
  }

  async #unlinkQuietly(key: string): Promise<void> {
    await this.#transfer("unlink", (c) => c.unlink(key));
  }

  /** Unlink the data key of a record that was replaced or removed (unless it is `keep`). */
  async #unlinkDataOf(recordText: string, keep?: string): Promise<void> {
    const old = parseRecord(recordText);
    if ("error" in old) return;
    const key = this.keys.data(old.id, old.xxh64, old.dataGeneration);
    if (key !== keep) await this.#unlinkQuietly(key);
  }

  // ---- fetch ----------------------------------------------------------------------------

  async has(id: RemoteCacheId): Promise<boolean> {
    assertCacheId(id);
    const record = await this.#readRecord(id);
    return record !== null && record !== "unavailable" && !("error" in record);
  }

  async fetchTo(id: RemoteCacheId, tempPath: string): Promise<FetchOutcome> {
    assertCacheId(id);
    if (typeof tempPath !== "string" || tempPath.length === 0) throw invalid("tempPath", "fetchTo needs a temp file path.");
    const c = this.#guard.counters;
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
      await this.#lookup("drop broken record", (cmd) =>
        cmd.eval(DROP_IF_GENERATION, { keys: [this.keys.heads(id.cacheKey, id.scopeId)], arguments: [scopeTag(id), String(record.generation)] }),
      );
      return { hit: false, reason: "corrupt" };
    }
  }

  async #readRecord(id: RemoteCacheId): Promise<RemoteRecord | { error: string } | null | "unavailable"> {
    const read = await this.#readRecordWithin("lookup", id);
    return read.ok ? read.value : "unavailable";
  }

  async #readRecordWithin(deadline: "lookup" | "control", id: RemoteCacheId): Promise<Guarded<RemoteRecord | { error: string } | null>> {
    const run = deadline === "lookup" ? this.#lookup.bind(this) : this.#control.bind(this);
    const read = await run("read record", (c) => c.hGet(this.keys.heads(id.cacheKey, id.scopeId), scopeTag(id)));
    if (!read.ok) return read;
    const text = asText(read.value);
    return { ok: true, value: text === null ? null : parseRecord(text, id) };
  }

  #reportBroken(id: RemoteCacheId, generation: number, reason: string): void {
    const key = `${id.cacheKey}\0${scopeTag(id)}\0${generation}`;
    if (this.#reported.has(key)) return;
    if (this.#reported.size > 1000) this.#reported.clear();
    this.#reported.add(key);
    this.#logger.warn(
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
        this.#transfer("fetch chunk", (c) => c.hGet(dataKey, String(index)), true);
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
    await this.#transfer("refresh ttl", async (c) => {
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
      throw invalid("historyKeys", "historyKeys must be the history's message-key chain (keys 1…n).");
    }
    const minMessages = Math.max(1, options?.minMessages ?? 1);
    const n = historyKeys.length;
    if (n < minMessages) return null;
    const c = this.#guard.counters;
    c.lookups += 1;
    // Fields for the longest prefixes first: key j holds the first j + 1 messages.
    const indexes: number[] = [];
    for (let j = n - 1; j >= minMessages - 1; j--) indexes.push(j);
    const read = await this.#lookup("read prefix index", (cmd) =>
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
    if (!target || typeof target !== "object") throw invalid("target", "remove needs { cacheKey, modelId? } or { all: true }.");
    const generation = await this.#nextGeneration("control");
    if (!generation.ok) return { ok: false, reason: failure(generation, "reserving a generation").reason };
    const outcome = "all" in target ? await this.#removeAll(generation.value) : await this.#removeKey(target, generation.value);
    if (outcome.ok) this.#guard.counters.removes += outcome.removed;
    return outcome;
  }

  async #removeKey(target: { cacheKey: string; modelId?: string | undefined; scopeId?: string | null | undefined }, generation: number): Promise<RemoveOutcome> {
    assertCacheKey(target.cacheKey, "cacheKey");
    if (target.modelId !== undefined) assertModelId(target.modelId);
    assertScopeId(target.scopeId);
    // One scope's key: its heads and tombstones are its own (a scoped key tag).
    const removed = await this.#control("delete", (c) =>
      c.eval(REMOVE, {
        keys: [this.keys.heads(target.cacheKey, target.scopeId), this.keys.tombs(target.cacheKey, target.scopeId)],
        arguments: [String(generation), target.modelId ?? "", String(TOMBSTONE_TTL_SECONDS)],
      }),
    );
    if (!removed.ok) return { ok: false, reason: failure(removed, "deleting").reason };
    const records = (Array.isArray(removed.value) ? removed.value : []).map(asText).filter((t): t is string => t !== null);
    for (const text of records) await this.#unlinkDataOf(text);
    return { ok: true, removed: records.length };
  }

  async #removeAll(generation: number): Promise<RemoveOutcome> {
    const keep = new Set([this.keys.clock, this.keys.deletedAll]);
    const done = await this.#guard.run("delete everything", Math.max(this.transferTimeoutMs, 60_000), async (signal) => {
      await this.#link.ready();
      const c = this.#link.commands(signal, this.transferTimeoutMs);
      // Recorded first: an upload ordered before it that publishes after this point sees it.
      await c.eval(RAISE_TO, { keys: [this.keys.deletedAll], arguments: [String(generation)] });
      let removed = 0;
      for await (const key of this.#link.scan(this.keys.everything)) {
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
      const read = await this.#transfer("list records", (c) => c.hGetAll(key));
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
      const facts = await this.#transfer("inspect states", (c) =>
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
    const iterator = this.#link.scan(pattern, type)[Symbol.asyncIterator]();
    for (let first = true; ; first = false) {
      const step = await this.#guard.run("list keys", this.transferTimeoutMs, async () => {
        if (first) await this.#link.ready();
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
    if (!state || typeof state !== "object") throw invalid("state", "evict needs { id, generation } as list() gives them.");
    assertCacheId(state.id);
    if (!Number.isSafeInteger(state.generation) || state.generation <= 0) throw invalid("generation", "evict needs the state's generation.");
    const current = await this.#readRecordWithin("control", state.id);
    if (!current.ok) return { ok: false, reason: failure(current, "reading the record").reason };
    const record = current.value;
    if (record === null || "error" in record || record.generation !== state.generation) return { ok: true, evicted: false };
    const heads = this.keys.heads(state.id.cacheKey, state.id.scopeId);
    const dataKey = this.keys.data(record.id, record.xxh64, record.dataGeneration);
    const dropped = await this.#control("evict", (c) =>
      c.eval(DROP_IF_GENERATION, { keys: [heads, dataKey], arguments: [scopeTag(state.id), String(state.generation)] }),
    );
    if (!dropped.ok) return { ok: false, reason: failure(dropped, "evicting").reason };
    return { ok: true, evicted: Number(asText(dropped.value)) === 1 };
  }

  async serverUsage(): Promise<ServerUsageOutcome> {
    // INFO is about a node, not a key: asked of each master of a cluster.
    const read = await this.#guard.run("read server memory", this.#controlTimeoutMs, async () => {
      await this.#link.ready();
      const nodes = await this.#link.nodes();
      return Promise.all(nodes.map(async (node) => asText(await node.info("memory")) ?? ""));
    });
    if (!read.ok) return { ok: false, reason: failure(read, "reading INFO memory").reason };
    return { ok: true, usage: sumMemoryInfo(read.value) };
  }

  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    await this.#guard.close();
    await this.#link.close();
  }
}

/** Set a key to a generation unless it already holds a later one. KEYS = key. ARGV = generation. */
const RAISE_TO = `
local cur = tonumber(redis.call('GET', KEYS[1]) or '0') or 0
if tonumber(ARGV[1]) > cur then redis.call('SET', KEYS[1], ARGV[1]) end
return 1
`;

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
