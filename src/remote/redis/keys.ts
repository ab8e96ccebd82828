/**
 * Where the Redis tier keeps things (pure). Every key starts with the tenant's `keyPrefix`
 * and carries a hash tag, so in Redis Cluster all keys of one cache key live in one slot
 * (its scripts run atomically there), while different caches spread over the cluster.
 *
 *   <p>{<key tag>}:heads                      HASH  scope tag → the record of that scope's state
 *   <p>{<key tag>}:tombs                      HASH  "*" | "m:<modelId>" → generation of the last delete
 *   <p>{<key tag>}:data:<scope>:<xxh64>:<gen> HASH  chunk index → bytes; one upload's own key
 *   <p>{<scope tag>}:prefix                   HASH  chain key → cache keys of states covering it (prefix index)
 *   <p>{chunks:<context>}:<id>                STRING a token chunk (kvkc), shared by every state of its
 *                                             state context (which names the scope) that holds its prefix
 *   <p>{kvkeep}:gen                           the fleet's generation clock
 *   <p>{kvkeep}:deleted-all                   generation of the last delete of everything
 *
 * key tag = XXH64 of the cache key (and of the isolation scope's id, for a scoped key);
 * scope tag = XXH64 of (model, fingerprint, config hash[, isolation scope id]): user strings
 * never appear in key names, so braces or odd bytes in them cannot move a key to another
 * slot or collide, and two isolation scopes never share a heads, tombstone, data or prefix
 * key (the same cache key in two scopes is two caches; a delete in one never reaches the
 * other). Keys of the shared space (no scope) are named as before scopes. Data keys are content-addressed (state checksum) and per
 * upload (its generation): two uploads never write into the same key.
 */
import { KvKeepError } from "../../errors.js";
import { xxh64Hex } from "../../keys/hash.js";
import type { RemoteCacheId, RemoteScope } from "../types.js";

export const DEFAULT_KEY_PREFIX = "kvkeep:";

export function assertKeyPrefix(prefix: unknown): asserts prefix is string {
  if (typeof prefix !== "string" || prefix.length > 200 || /[{}\s*?[\]\\]/.test(prefix)) {
    throw new KvKeepError(
      "INVALID_ARGUMENT",
      "keyPrefix must be a string of at most 200 characters without braces, spaces or glob characters (e.g. \"kvkeep:tenant-a:\").",
      { argument: "keyPrefix" },
    );
  }
}

export function keyTag(cacheKey: string, scopeId: string | null = null): string {
  return xxh64Hex(scopeId === null ? `kvkeep-remote-key\0${cacheKey}` : `kvkeep-remote-scoped-key\0${scopeId}\0${cacheKey}`);
}

export function scopeTag(scope: RemoteScope): string {
  const parts: Array<string | null> = [scope.modelId, scope.fingerprint, scope.configHash];
  if (scope.scopeId != null) parts.push(scope.scopeId);
  return xxh64Hex(`kvkeep-remote-scope\0${JSON.stringify(parts)}`);
}

export class RedisKeys {
  constructor(readonly prefix: string) {}

  heads(cacheKey: string, scopeId: string | null | undefined = null): string {
    return `${this.prefix}{${keyTag(cacheKey, scopeId ?? null)}}:heads`;
  }

  tombs(cacheKey: string, scopeId: string | null | undefined = null): string {
    return `${this.prefix}{${keyTag(cacheKey, scopeId ?? null)}}:tombs`;
  }

  data(id: RemoteCacheId, xxh64: string, generation: number): string {
    return `${this.prefix}{${keyTag(id.cacheKey, id.scopeId ?? null)}}:data:${scopeTag(id)}:${xxh64}:${generation}`;
  }

  /** A token chunk: hash-tagged by its context, so one context's chunks share a slot (a pipeline checks several). */
  tokenChunk(context: string, id: string): string {
    return `${this.prefix}{chunks:${context}}:${id}`;
  }

  prefixIndex(scope: RemoteScope): string {
    return `${this.prefix}{${scopeTag(scope)}}:prefix`;
  }

  get clock(): string {
    return `${this.prefix}{kvkeep}:gen`;
  }

  get deletedAll(): string {
    return `${this.prefix}{kvkeep}:deleted-all`;
  }

  /** A context's record of its token chunks' uses by uploads (sorted set: id → server ms); same slot as its chunks. */
  tokenChunkUses(context: string): string {
    return `${this.prefix}{chunks:${context}}:used`;
  }

  /** A token chunk key's context and id, or null for another key. */
  parseTokenChunk(key: string): { context: string; id: string } | null {
    if (!key.startsWith(this.prefix)) return null;
    const match = /^\{chunks:([0-9a-f]{32})\}:([0-9a-f]{32})$/.exec(key.slice(this.prefix.length));
    return match ? { context: match[1]!, id: match[2]! } : null;
  }

  /** SCAN pattern for every token chunk of this prefix (with TYPE string: not the `used` sets). */
  get tokenChunksPattern(): string {
    return `${this.prefix}{chunks:*}:*`;
  }

  /** SCAN pattern for every heads hash of this prefix (the prefix has no glob characters). */
  get headsPattern(): string {
    return `${this.prefix}{*}:heads`;
  }

  /**
   * SCAN pattern for every key of this prefix. Every key has a brace right after the
   * prefix, so another tenant's prefix that merely starts with this one ("kvkeep:" and
   * "kvkeep:a:") never matches.
   */
  get everything(): string {
    return `${this.prefix}{*`;
  }
}
