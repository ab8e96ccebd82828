/**
 * The tier's connections to the server, over any node-redis client: a single client
 * (`createClient`), a cluster (`createCluster`) or any other with the same command methods,
 * and the few commands the tier sends on them. Each call gets the caller's AbortSignal and
 * timeout, so a command still queued at the deadline is dropped by the client instead of
 * running late. Nothing else in the tier loads node-redis (the CLI's `--remote` creates its
 * own client).
 */
import { createClient, ErrorReply, type RedisClientOptions, RESP_TYPES, TimeoutError } from "redis";
import type { ErrorClass } from "../guard.js";

/** The command methods the tier uses (node-redis names; replies typed loosely on purpose). */
interface Commands {
  get(key: string): Promise<unknown>;
  /** SET with NX (and EX): null when the key was there already. */
  set(key: string, value: string | Buffer, options?: { NX?: boolean; EX?: number }): Promise<unknown>;
  exists(key: string): Promise<unknown>;
  hGet(key: string, field: string): Promise<unknown>;
  hmGet(key: string, fields: string[]): Promise<unknown>;
  hSet(key: string, field: string | Record<string, string | Buffer>, value?: string | Buffer): Promise<unknown>;
  hGetAll(key: string): Promise<unknown>;
  expire(key: string, seconds: number): Promise<unknown>;
  /** TOUCH: a use of the key (resets its idle time), nothing else. */
  touch(key: string): Promise<unknown>;
  /** MEMORY USAGE: not a use of the key either. */
  memoryUsage(key: string): Promise<unknown>;
  unlink(key: string): Promise<unknown>;
  eval(script: string, options: { keys: string[]; arguments: Array<string | Buffer> }): Promise<unknown>;
  /** Neither PTTL nor OBJECT IDLETIME counts as a use of the key (its idle time stays). */
  pTTL(key: string): Promise<unknown>;
  objectIdleTime(key: string): Promise<unknown>;
  info(section: string): Promise<unknown>;
  /** CLUSTER NODES (a cluster's node only). */
  clusterNodes(): Promise<unknown>;
  scanIterator?(options: { MATCH: string; COUNT: number; TYPE?: string }): AsyncIterable<unknown>;
}

/** What kvkeep needs of a node-redis client or cluster object. */
export interface NodeRedisClientLike {
  readonly isOpen: boolean;
  readonly isReady?: boolean;
  connect(): Promise<unknown>;
  on(event: "error", listener: (error: unknown) => void): unknown;
  withCommandOptions(options: object): unknown;
  /** A new client with the same options (a second connection). */
  duplicate?(): NodeRedisClientLike;
  destroy?(): unknown;
  close?(): Promise<unknown>;
  /** Cluster only: its master nodes, and a client for one. */
  masters?: readonly unknown[];
  nodeClient?(node: unknown): unknown;
}

/**
 * The client the tier talks through: the caller's `client` (`owned: false`, left open at
 * close), or one created from `url` (`owned: true`), which gives up a connection attempt
 * after 5 × the lookup deadline `timeoutMs` (at least 1 s). Call with checked options.
 */
export function tierClient(
  given: { url?: string | undefined; client?: NodeRedisClientLike | undefined; clientOptions?: RedisClientOptions | undefined },
  timeoutMs: number,
): { client: NodeRedisClientLike; owned: boolean } {
  if (given.url === undefined) return { client: given.client!, owned: false };
  const clientOptions = given.clientOptions ?? {};
  const created = createClient({
    ...clientOptions,
    url: given.url,
    // Fail at once while disconnected instead of queueing: the guard's deadline and
    // breaker decide, and nothing piles up in memory during an outage.
    disableOfflineQueue: true,
    socket: {
      connectTimeout: Math.max(1000, timeoutMs * 5),
      reconnectStrategy: (retries: number) => Math.min(50 * 2 ** retries, 2000),
      ...clientOptions.socket,
    },
  } as RedisClientOptions);
  return { client: created as unknown as NodeRedisClientLike, owned: true };
}

const BUFFER_MAPPING = { [RESP_TYPES.BLOB_STRING]: Buffer };
/** Server replies that mean "not serving right now", not "it answered". */
const TRANSIENT_REPLY = /^(LOADING|CLUSTERDOWN|TRYAGAIN|MASTERDOWN|BUSY|READONLY)\b/;

/** How a client error counts for the circuit breaker. */
export function classifyRedisError(error: unknown): ErrorClass {
  if (error instanceof TimeoutError) return "timeout";
  if (error instanceof ErrorReply) return TRANSIENT_REPLY.test(error.message) ? "unreachable" : "reply";
  if ((error as { name?: unknown } | null)?.name === "AbortError") return "timeout";
  return "unreachable";
}

/** A reply as text (node-redis gives strings, or Buffers under a type mapping). */
export function asText(value: unknown): string | null {
  if (value === null || value === undefined) return null;
  if (typeof value === "string") return value;
  if (Buffer.isBuffer(value)) return value.toString("utf8");
  if (typeof value === "number") return String(value);
  return null;
}

/** One connection (or cluster client) and whether the tier owns it. */
class Connection {
  readonly client: NodeRedisClientLike;
  readonly #owned: boolean;
  #connecting: Promise<unknown> | null = null;

  constructor(client: NodeRedisClientLike, owned: boolean, onError: (error: unknown) => void) {
    this.client = client;
    this.#owned = owned;
    // node-redis throws from an EventEmitter without an error listener: always have one.
    client.on("error", onError);
  }

  connectInBackground(): void {
    if (this.client.isOpen || this.#connecting) return;
    // A failed first connection is tried again by the next ready() (the breaker paces it).
    this.#connecting = this.client.connect().then(
      () => {},
      () => {
        this.#connecting = null;
      },
    );
  }

  async ready(): Promise<void> {
    this.connectInBackground();
    if (this.#connecting && this.client.isReady !== true) await this.#connecting;
  }

  commands(signal: AbortSignal, timeoutMs: number, binary: boolean): Commands {
    return this.client.withCommandOptions({
      abortSignal: signal,
      timeout: timeoutMs,
      ...(binary ? { typeMapping: BUFFER_MAPPING } : {}),
    }) as Commands;
  }

  async close(): Promise<void> {
    if (!this.#owned) return;
    const client = this.client;
    const connecting = this.#connecting !== null && client.isReady !== true;
    if (client.isReady === true) {
      // Connected: let queued commands finish, then close the socket.
      await Promise.resolve(client.close?.()).catch(() => client.destroy?.());
    } else if (client.isOpen) {
      // Connecting or reconnecting to a server that does not answer: stop trying now.
      client.destroy?.();
    }
    // A destroyed client settles its connect() at once; never let close() hang on it.
    let timer: NodeJS.Timeout | undefined;
    await Promise.race([this.#connecting, new Promise((r) => (timer = setTimeout(r, 2000)))]);
    clearTimeout(timer);
    // node-redis misses the socket of a TCP connect still under way at destroy(): the
    // attempt then finishes its handshake on a socket nobody closes, and the process never
    // exits. Destroy again once the attempt has settled (a no-op when nothing is left).
    if (connecting) client.destroy?.();
  }
}

/**
 * Two connections to the server: lookups (a turn waits for them) on the client given or
 * created, and bulk chunk transfers on a duplicate of it, so a lookup never queues behind
 * megabytes of chunks on one connection. The duplicate is the tier's own (closed at close)
 * even when the client was passed in.
 */
export class RedisConnections {
  readonly #lookup: Connection;
  readonly #bulk: Connection;

  /**
   * `owned`: the tier created the client and closes it; a client passed in is connected
   * if it is not yet, and left open at close (its owner closes it).
   */
  constructor(client: NodeRedisClientLike, owned: boolean, onError: (error: unknown) => void) {
    this.#lookup = new Connection(client, owned, onError);
    this.#bulk = typeof client.duplicate === "function" ? new Connection(client.duplicate(), true, onError) : this.#lookup;
  }

  get isCluster(): boolean {
    return typeof this.#lookup.client.nodeClient === "function";
  }

  /** Start connecting, without waiting. */
  connectInBackground(): void {
    this.#lookup.connectInBackground();
    this.#bulk.connectInBackground();
  }

  /** Wait for the connection's first attempt to connect if one is running (bounded by the caller's deadline). */
  ready(connection: "lookup" | "bulk" = "lookup"): Promise<void> {
    return (connection === "lookup" ? this.#lookup : this.#bulk).ready();
  }

  /** Commands with the caller's deadline; `binary` replies are Buffers (chunk data). */
  commands(signal: AbortSignal, timeoutMs: number, options: { binary?: boolean; connection?: "lookup" | "bulk" } = {}): Commands {
    return (options.connection === "bulk" ? this.#bulk : this.#lookup).commands(signal, timeoutMs, options.binary ?? false);
  }

  /** The server, or each master of a cluster (for commands about a node, not a key). */
  async nodes(): Promise<Commands[]> {
    const client = this.#lookup.client;
    if (!this.isCluster) return [client as unknown as Commands];
    const nodes: Commands[] = [];
    for (const master of client.masters ?? []) nodes.push((await client.nodeClient!(master)) as Commands);
    return nodes;
  }

  /** Every key matching `pattern`, on every master of a cluster. */
  async *scan(pattern: string, type?: string): AsyncIterable<string> {
    for (const node of await this.nodes()) {
      for await (const batch of node.scanIterator!({ MATCH: pattern, COUNT: 1000, ...(type ? { TYPE: type } : {}) })) {
        for (const key of Array.isArray(batch) ? batch : [batch]) {
          const text = asText(key);
          if (text !== null) yield text;
        }
      }
    }
  }

  async close(): Promise<void> {
    await Promise.all([this.#lookup.close(), this.#bulk === this.#lookup ? null : this.#bulk.close()]);
  }
}
