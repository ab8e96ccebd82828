/**
 * Administering the Redis tier (`kvkeep scan | gc --remote`; the store uses none of it):
 * list the published states with what the server knows of their use — idle time and
 * expiry read with commands that do not count as a use, and whether their chunks are still
 * there — evict one state while it is still the listed commit, collect the token chunks no
 * published state names any more, and read the server's memory use. A listing that cannot
 * read the server rejects with REMOTE_UNAVAILABLE.
 */
import { KvKeepError } from "../../errors.js";
import { assertCacheKey } from "../../keys/safe-key.js";
import { parseRecord, type RemoteRecord, stateOfRecord } from "../record.js";
import type {
  CollectTokenChunksOutcome,
  EvictOutcome,
  RemoteCacheId,
  RemoteListing,
  RemoteServerUsage,
  ServerUsageOutcome,
  TokenChunkCollection,
} from "../types.js";
import { assertCacheId, assertScopeId, invalidArgument } from "./arguments.js";
import { failureReason, type RedisCalls } from "./calls.js";
import { asText } from "./connections.js";
import { scopeTag } from "./keys.js";
import { DROP_IF_GENERATION, DROP_IF_UNUSED } from "./scripts.js";

/** Token chunk keys read (idle time and size) per round trip when collecting. */
const COLLECT_BATCH = 256;
/** The least margin collectTokenChunks takes: a younger unnamed chunk is likely an upload's under way. */
export const MIN_CHUNK_IDLE_MS = 60_000;

export class Administration {
  readonly #calls: RedisCalls;

  constructor(calls: RedisCalls) {
    this.#calls = calls;
  }

  async *list(filter?: { cacheKey?: string | undefined; scopeId?: string | null | undefined }): AsyncIterable<RemoteListing> {
    const { keys } = this.#calls;
    for await (const records of this.#records(filter)) {
      // About each state's data key, with commands that do not count as a use of it.
      const facts = await this.#calls.transfer("inspect states", (c) =>
        Promise.all(
          records.map(async (r) => {
            const dataKey = keys.data(r.id, r.xxh64, r.dataGeneration);
            // An LFU maxmemory policy answers OBJECT IDLETIME with an error: idle time unknown.
            const [pttl, idle] = await Promise.all([c.pTTL(dataKey), c.objectIdleTime(dataKey).catch(() => null)]);
            return { pttl: Number(pttl), idle: idle === null ? null : Number(idle) };
          }),
        ),
      );
      if (!facts.ok) throw listingFailed(failureReason(facts, "inspecting the states"));
      for (const [i, record] of records.entries()) {
        const { pttl, idle } = facts.value[i]!;
        const whole = pttl !== -2; // -2: the data key is gone
        yield {
          ...stateOfRecord(record),
          idleMs: whole && idle !== null && Number.isFinite(idle) ? idle * 1000 : null,
          expiresInMs: whole && pttl >= 0 ? pttl : null,
          whole,
        };
      }
    }
  }

  /**
   * Remove the token chunks no published state names and that nothing has used for at least
   * `minIdleMs` (at least a minute): no upload recorded a use (the context's `used` set,
   * written by the script that finds or stores the chunk, before its state is published) and
   * Redis saw no read or write (its idle time). The chunk keys are read first and the records
   * after, so a chunk a state published meanwhile names is either seen named or was used
   * recently; each removal re-checks both atomically. What a race can still cost is a miss
   * for a state whose upload took longer than `minIdleMs`, never a torn load (every chunk is
   * verified when fetched). Nothing is removed when a record cannot be read (a newer kvkeep's
   * format: its chunks would look unnamed), or while a cluster moves slots (a scan may miss a
   * moving key). Under an LFU maxmemory policy idle times are unknown: nothing is removed.
   * `dryRun`: count what would go (by the idle times read), remove nothing.
   */
  async collectTokenChunks(options: { minIdleMs: number; dryRun: boolean }): Promise<CollectTokenChunksOutcome> {
    if (!Number.isFinite(options?.minIdleMs) || options.minIdleMs < MIN_CHUNK_IDLE_MS) {
      throw invalidArgument("minIdleMs", `collectTokenChunks needs minIdleMs of at least ${MIN_CHUNK_IDLE_MS} ms (younger chunks may belong to an upload under way).`);
    }
    const { keys } = this.#calls;
    const minIdleSeconds = Math.ceil(options.minIdleMs / 1000);
    const migrating = await this.#slotsMoving();
    if (migrating !== null) return { ok: false, reason: migrating };
    let chunkKeys: string[];
    try {
      chunkKeys = await this.#scanKeys(keys.tokenChunksPattern, "string");
    } catch (error) {
      if (error instanceof KvKeepError) return { ok: false, reason: error.message };
      throw error;
    }
    const found: Array<{ key: string; context: string; id: string; bytes: number; idleSeconds: number | null }> = [];
    for (let at = 0; at < chunkKeys.length; at += COLLECT_BATCH) {
      const batch = chunkKeys.slice(at, at + COLLECT_BATCH);
      const read = await this.#calls.transfer("inspect token chunks", (c) =>
        Promise.all(
          batch.map(async (key) => {
            // Neither counts as a use (STRLEN would: then no chunk would ever look idle).
            const [bytes, idle] = await Promise.all([c.memoryUsage(key), c.objectIdleTime(key).catch(() => null)]);
            return { bytes: Number(bytes ?? 0), idleSeconds: idle === null || !Number.isFinite(Number(idle)) ? null : Number(idle) };
          }),
        ),
      );
      if (!read.ok) return { ok: false, reason: failureReason(read, "inspecting the token chunks") };
      for (const [i, key] of batch.entries()) {
        const parsed = keys.parseTokenChunk(key);
        if (parsed) found.push({ key, ...parsed, ...read.value[i]! });
      }
    }
    const named = new Set<string>();
    let unreadable = 0;
    try {
      for await (const records of this.#records(undefined, () => unreadable++)) {
        for (const record of records) {
          const chunks = record.tokenChunks;
          if (!chunks) continue;
          for (const id of chunks.ids) named.add(keys.tokenChunk(chunks.context, id));
        }
      }
    } catch (error) {
      if (error instanceof KvKeepError) return { ok: false, reason: error.message };
      throw error;
    }
    if (unreadable > 0) {
      return { ok: false, reason: `${unreadable} remote record(s) this kvkeep cannot read (a newer kvkeep's?): their chunks would look unnamed, so none is removed` };
    }
    const movedMeanwhile = await this.#slotsMoving();
    if (movedMeanwhile !== null) return { ok: false, reason: movedMeanwhile };
    const collection: TokenChunkCollection = { chunks: 0, bytes: 0, unreferenced: 0, unreferencedBytes: 0, removed: 0, removedBytes: 0, idleUnknown: 0 };
    const candidates: typeof found = [];
    for (const chunk of found) {
      if (!(chunk.bytes > 0)) continue; // gone since the scan
      collection.chunks++;
      collection.bytes += chunk.bytes;
      if (named.has(chunk.key)) continue;
      collection.unreferenced++;
      collection.unreferencedBytes += chunk.bytes;
      if (chunk.idleSeconds === null) collection.idleUnknown++;
      else if (chunk.idleSeconds >= minIdleSeconds) candidates.push(chunk);
    }
    for (const chunk of candidates) {
      if (options.dryRun) {
        collection.removed++;
        collection.removedBytes += chunk.bytes;
        continue;
      }
      const dropped = await this.#calls.control("collect a token chunk", (c) =>
        c.eval(DROP_IF_UNUSED, { keys: [chunk.key, keys.tokenChunkUses(chunk.context)], arguments: [String(options.minIdleMs), chunk.id] }),
      );
      if (!dropped.ok) return { ok: false, reason: `${failureReason(dropped, "removing a token chunk")} (after removing ${collection.removed})` };
      const bytes = Number(asText(dropped.value));
      if (bytes >= 0) {
        collection.removed++;
        collection.removedBytes += bytes;
      }
    }
    return { ok: true, collection };
  }

  /** Why collecting is unsafe now: a cluster slot migrating or importing (CLUSTER NODES), else null. */
  async #slotsMoving(): Promise<string | null> {
    const { connections } = this.#calls;
    if (!connections.isCluster) return null;
    const read = await this.#calls.guard.run("read the cluster's slots", this.#calls.timeoutOf("control"), async () => {
      await connections.ready();
      const nodes = await connections.nodes();
      return Promise.all(nodes.map(async (node) => asText(await node.clusterNodes()) ?? ""));
    });
    if (!read.ok) return failureReason(read, "reading CLUSTER NODES");
    // A moving slot shows as [slot->-node] (migrating) or [slot-<-node] (importing).
    return read.value.some((text) => /\[\d+-[<>]-/.test(text)) ? "the cluster is moving slots: collect token chunks once it is done" : null;
  }

  /** The well-formed records of every heads hash (or one cache key's), a hash at a time. */
  async *#records(
    filter?: { cacheKey?: string | undefined; scopeId?: string | null | undefined },
    onUnreadable?: () => void,
  ): AsyncIterable<RemoteRecord[]> {
    const { keys } = this.#calls;
    let headsKeys: string[];
    if (filter?.cacheKey !== undefined) {
      assertCacheKey(filter.cacheKey, "cacheKey");
      assertScopeId(filter.scopeId);
      headsKeys = [keys.heads(filter.cacheKey, filter.scopeId)];
    } else {
      headsKeys = await this.#scanKeys(keys.headsPattern, "hash");
    }
    for (const key of headsKeys) {
      const read = await this.#calls.transfer("list records", (c) => c.hGetAll(key));
      if (!read.ok) throw listingFailed(failureReason(read, `reading ${key}`));
      const records: RemoteRecord[] = [];
      for (const [field, value] of recordPairs(read.value)) {
        const record = parseRecord(value);
        if ("error" in record) {
          onUnreadable?.();
          continue;
        }
        // Filed where it belongs, or it is not trusted (not even listed).
        if (key !== keys.heads(record.id.cacheKey, record.id.scopeId) || field !== scopeTag(record.id)) continue;
        records.push(record);
      }
      if (records.length > 0) yield records;
    }
  }

  /** Every key matching `pattern`, each SCAN step under the transfer deadline. */
  async #scanKeys(pattern: string, type?: string): Promise<string[]> {
    const { connections, settings } = this.#calls;
    const keys: string[] = [];
    const iterator = connections.scan(pattern, type)[Symbol.asyncIterator]();
    for (let first = true; ; first = false) {
      const step = await this.#calls.guard.run("list keys", settings.transferTimeoutMs, async () => {
        if (first) await connections.ready();
        return iterator.next();
      });
      if (!step.ok) {
        void iterator.return?.(undefined)?.catch(() => {});
        throw listingFailed(failureReason(step, "scanning the keys"));
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
    if (!current.ok) return { ok: false, reason: failureReason(current, "reading the record") };
    const record = current.value;
    if (record === null || "error" in record || record.generation !== state.generation) return { ok: true, evicted: false };
    const { keys } = this.#calls;
    const heads = keys.heads(state.id.cacheKey, state.id.scopeId);
    const dataKey = keys.data(record.id, record.xxh64, record.dataGeneration);
    const dropped = await this.#calls.control("evict", (c) =>
      c.eval(DROP_IF_GENERATION, { keys: [heads, dataKey], arguments: [scopeTag(state.id), String(state.generation)] }),
    );
    if (!dropped.ok) return { ok: false, reason: failureReason(dropped, "evicting") };
    return { ok: true, evicted: Number(asText(dropped.value)) === 1 };
  }

  async serverUsage(): Promise<ServerUsageOutcome> {
    const { connections } = this.#calls;
    // INFO is about a node, not a key: asked of each master of a cluster.
    const read = await this.#calls.guard.run("read server memory", this.#calls.timeoutOf("control"), async () => {
      await connections.ready();
      const nodes = await connections.nodes();
      return Promise.all(nodes.map(async (node) => asText(await node.info("memory")) ?? ""));
    });
    if (!read.ok) return { ok: false, reason: failureReason(read, "reading INFO memory") };
    return { ok: true, usage: sumMemoryInfo(read.value) };
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
