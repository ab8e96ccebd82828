/**
 * Reading states back from the Redis tier: `has` (a cheap look), `fetchTo` (the record,
 * checked strictly, then chunk by chunk into a temp file, hashed on the way: any missing,
 * short or altered chunk is a miss, logged once, and its record is dropped — never a torn
 * file) and `lookupPrefix` (a scope's prefix index, then the candidates' records). Reads
 * are under the lookup deadline, chunks under the transfer deadline.
 */
import { promises as fs } from "node:fs";
import { fsWriteError, KvKeepError } from "../../errors.js";
import { createXxh64, hashReady } from "../../keys/hash.js";
import { assertCacheKey } from "../../keys/safe-key.js";
import { logLine } from "../../logger.js";
import type { Guarded } from "../guard.js";
import { chunkLength, type RemoteRecord, stateOfRecord } from "../record.js";
import type { FetchOutcome, RemoteCacheId, RemotePrefixHit, RemoteScope } from "../types.js";
import { assertCacheId, invalidArgument } from "./arguments.js";
import { PIPELINE_DEPTH, type RecordRead, type RedisCalls } from "./calls.js";
import { asText } from "./connections.js";
import { scopeTag } from "./keys.js";
import { DROP_IF_GENERATION } from "./scripts.js";

/** How many distinct candidates a prefix lookup checks before it gives up. */
const PREFIX_CANDIDATES = 3;

/** "ok", "missing" (a chunk is gone), "unavailable", or what was wrong with the bytes. */
type DownloadResult = "ok" | "missing" | "unavailable" | (string & {});

export class Downloader {
  readonly #calls: RedisCalls;
  /** Broken records already reported, so one bad state warns once. */
  readonly #reportedBroken = new Set<string>();

  constructor(calls: RedisCalls) {
    this.#calls = calls;
  }

  async has(id: RemoteCacheId): Promise<boolean> {
    assertCacheId(id);
    const record = await this.#readRecord(id);
    return record !== null && record !== "unavailable" && !("error" in record);
  }

  async fetchTo(id: RemoteCacheId, tempPath: string): Promise<FetchOutcome> {
    assertCacheId(id);
    if (typeof tempPath !== "string" || tempPath.length === 0) throw invalidArgument("tempPath", "fetchTo needs a temp file path.");
    const counters = this.#calls.counters;
    counters.lookups += 1;
    let retried = false;
    for (;;) {
      const record = await this.#readRecord(id);
      if (record === "unavailable") return { hit: false, reason: "unavailable" };
      if (record === null) {
        counters.misses += 1;
        return { hit: false, reason: "absent" };
      }
      if ("error" in record) {
        counters.misses += 1;
        counters.corrupt += 1;
        this.#reportBroken(id, 0, record.error);
        return { hit: false, reason: "corrupt" };
      }
      let result: DownloadResult;
      try {
        result = await this.#download(record, tempPath);
      } catch (error) {
        await fs.unlink(tempPath).catch(() => {});
        throw error instanceof KvKeepError ? error : fsWriteError("writing a state fetched from Redis", error);
      }
      if (result === "ok") {
        counters.hits += 1;
        counters.bytesDownloaded += record.size;
        void this.#touch(record);
        return { hit: true, state: stateOfRecord(record) };
      }
      await fs.unlink(tempPath).catch(() => {});
      if (result === "unavailable") return { hit: false, reason: "unavailable" };
      // A chunk was missing: a newer commit may have replaced the record meanwhile. Once.
      if (result === "missing" && !retried) {
        retried = true;
        const again = await this.#readRecord(id);
        if (again !== "unavailable" && again !== null && !("error" in again) && again.generation !== record.generation) continue;
      }
      counters.misses += 1;
      counters.corrupt += 1;
      this.#reportBroken(id, record.generation, result === "missing" ? "a chunk is missing (evicted or expired)" : result);
      await this.#calls.lookup("drop broken record", (c) =>
        c.eval(DROP_IF_GENERATION, { keys: [this.#calls.keys.heads(id.cacheKey, id.scopeId)], arguments: [scopeTag(id), String(record.generation)] }),
      );
      return { hit: false, reason: "corrupt" };
    }
  }

  /** The record of `id` under the lookup deadline; "unavailable" when it cannot be read in time. */
  async #readRecord(id: RemoteCacheId): Promise<RecordRead | "unavailable"> {
    const read = await this.#calls.readRecord("lookup", id);
    return read.ok ? read.value : "unavailable";
  }

  #reportBroken(id: RemoteCacheId, generation: number, reason: string): void {
    const key = `${id.cacheKey}\0${scopeTag(id)}\0${generation}`;
    if (this.#reportedBroken.has(key)) return;
    if (this.#reportedBroken.size > 1000) this.#reportedBroken.clear();
    this.#reportedBroken.add(key);
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
    const dataKey = this.#calls.keys.data(record.id, record.xxh64, record.dataGeneration);
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
    const { keys, settings } = this.#calls;
    const ttl = settings.ttlSeconds;
    if (ttl === null) return;
    await this.#calls.transfer("refresh ttl", async (c) => {
      await Promise.all([
        c.expire(keys.heads(record.id.cacheKey, record.id.scopeId), ttl),
        c.expire(keys.data(record.id, record.xxh64, record.dataGeneration), ttl),
      ]);
    });
  }

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
    const counters = this.#calls.counters;
    counters.lookups += 1;
    // Fields for the longest prefixes first: key j holds the first j + 1 messages.
    const indexes: number[] = [];
    for (let j = n - 1; j >= minMessages - 1; j--) indexes.push(j);
    const read = await this.#calls.lookup("read prefix index", (c) =>
      c.hmGet(this.#calls.keys.prefixIndex(scope), indexes.map((j) => historyKeys[j]!)),
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
        counters.hits += 1;
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
    counters.misses += 1;
    return null;
  }
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
