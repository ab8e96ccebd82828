/**
 * What `createRedisTier` takes: the options, checked in one place (pure: each bad value an
 * INVALID_ARGUMENT naming it) into the settings the tier runs with.
 */
import type { RedisClientOptions } from "redis";
import type { Logger } from "../../logger.js";
import { MAX_CHUNK_BYTES } from "../record.js";
import { invalidArgument } from "./arguments.js";
import type { NodeRedisClientLike } from "./connections.js";
import { DEFAULT_CHUNK_BYTES, DEFAULT_TIMEOUT_MS, DEFAULT_TRANSFER_TIMEOUT_MS, DEFAULT_TTL_SECONDS } from "./defaults.js";
import { assertKeyPrefix, DEFAULT_KEY_PREFIX } from "./keys.js";

/** What `createRedisTier` takes: `url` or `client`, and how the tier uses the server. */
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

/** The options checked, with the defaults filled in. */
export interface RedisTierSettings {
  readonly keyPrefix: string;
  readonly chunkBytes: number;
  readonly ttlSeconds: number | null;
  readonly timeoutMs: number;
  readonly transferTimeoutMs: number;
}

/** Check `options` (throws INVALID_ARGUMENT on the first bad one) and fill in the defaults. */
export function checkOptions(options: RedisTierOptions): RedisTierSettings {
  if (!options || typeof options !== "object") throw invalidArgument("options", "createRedisTier needs { url } or { client }.");
  const { url, client } = options;
  if ((url === undefined) === (client === undefined)) {
    throw invalidArgument("url", "createRedisTier needs exactly one of url (kvkeep creates the client) or client (yours).");
  }
  if (url !== undefined && (typeof url !== "string" || !/^rediss?:\/\//.test(url))) {
    throw invalidArgument("url", "url must look like redis://host:6379 or rediss://host:6380.");
  }
  if (client !== undefined && (typeof client !== "object" || typeof (client as NodeRedisClientLike).withCommandOptions !== "function")) {
    throw invalidArgument("client", "client must be a node-redis client (createClient or createCluster from the redis package).");
  }
  const keyPrefix = options.keyPrefix ?? DEFAULT_KEY_PREFIX;
  assertKeyPrefix(keyPrefix);
  return {
    keyPrefix,
    chunkBytes: positiveInt(options.chunkBytes ?? DEFAULT_CHUNK_BYTES, "chunkBytes", 4096, MAX_CHUNK_BYTES),
    ttlSeconds: options.ttlSeconds === null ? null : positiveInt(options.ttlSeconds ?? DEFAULT_TTL_SECONDS, "ttlSeconds", 1, 2 ** 31 - 1),
    timeoutMs: positiveInt(options.timeoutMs ?? DEFAULT_TIMEOUT_MS, "timeoutMs", 1, 600_000),
    transferTimeoutMs: positiveInt(options.transferTimeoutMs ?? DEFAULT_TRANSFER_TIMEOUT_MS, "transferTimeoutMs", 1, 3_600_000),
  };
}

function positiveInt(value: unknown, argument: string, min: number, max: number): number {
  if (typeof value !== "number" || !Number.isSafeInteger(value) || value < min || value > max) {
    throw invalidArgument(argument, `${argument} must be an integer from ${min} to ${max}.`);
  }
  return value;
}
