/**
 * Every call the Redis tier makes to its server, and the few steps its parts share. A call
 * runs through the guard (../guard.ts: deadline, circuit breaker, counters, one warning per
 * outage) under one of three deadlines:
 *
 * - `lookup`: a turn waits for it (`timeoutMs`, 200 ms by default);
 * - `transfer`: one chunk or one upload step, on the bulk connection so a lookup never
 *   queues behind megabytes of chunks (`transferTimeoutMs`, 10 s by default);
 * - `control`: an explicit delete or an administration step, whose caller waits, but not
 *   for long (5 × `timeoutMs`, at least 1 s).
 *
 * Shared steps: the generation clock, reading a record, unlinking a data key.
 */
import { type Logger, logLine } from "../../logger.js";
import { type GuardFailure, type Guarded, RemoteGuard } from "../guard.js";
import { parseRecord, type RemoteRecord } from "../record.js";
import type { RemoteCacheId } from "../types.js";
import { asText, classifyRedisError, type NodeRedisClientLike, RedisConnections } from "./connections.js";
import { RedisKeys, scopeTag } from "./keys.js";
import type { RedisTierSettings } from "./options.js";
import { NEXT_GENERATION } from "./scripts.js";

export type Deadline = "lookup" | "transfer" | "control";
export type Commands = ReturnType<RedisConnections["commands"]>;
/** A record as read: checked, refused (`error`), or absent (null). */
export type RecordRead = RemoteRecord | { error: string } | null;

/** Chunk commands kept in flight at once during a transfer. */
export const PIPELINE_DEPTH = 4;

/** Why a call failed, for an outcome's `reason`: what was being done, and the error or the guard's verdict. */
export function failureReason(attempt: GuardFailure, what: string): string {
  const detail = attempt.error instanceof Error ? attempt.error.message : attempt.reason;
  return `${what}: ${detail}`;
}

export class RedisCalls {
  readonly settings: RedisTierSettings;
  readonly keys: RedisKeys;
  /** The two connections (lookups, chunk transfers); for what a key-less call needs (SCAN, INFO). */
  readonly connections: RedisConnections;
  /** For calls with a deadline of their own (a SCAN step, delete-everything). */
  readonly guard: RemoteGuard;
  #logger: Logger;

  constructor(settings: RedisTierSettings, { client, owned }: { client: NodeRedisClientLike; owned: boolean }, logger: Logger) {
    this.settings = settings;
    this.keys = new RedisKeys(settings.keyPrefix);
    this.#logger = logger;
    const onError = (error: unknown): void => {
      // Logged only during an outage the guard has warned about (once). Otherwise the client
      // reconnects on its own and no operation fails — e.g. the "Connection timeout" its
      // connect timer reports when a model load held the event loop while the socket
      // connected — and a line at every start would only alarm. An error that does fail an
      // operation reaches the guard, which warns with it.
      if (this.guard?.state === "open") this.#logger.debug(logLine("redis client error", { error }));
    };
    this.connections = new RedisConnections(client, owned, onError);
    const probeTimeoutMs = Math.max(settings.timeoutMs, 1000);
    this.guard = new RemoteGuard({
      kind: "redis",
      classify: classifyRedisError,
      probeTimeoutMs,
      probe: async (signal) => {
        await this.connections.ready();
        await this.connections.commands(signal, probeTimeoutMs).exists(this.keys.clock);
      },
    });
    this.guard.logger = logger;
  }

  get logger(): Logger {
    return this.#logger;
  }

  set logger(logger: Logger) {
    this.#logger = logger;
    this.guard.logger = logger;
  }

  get counters(): RemoteGuard["counters"] {
    return this.guard.counters;
  }

  timeoutOf(deadline: Deadline): number {
    const { timeoutMs, transferTimeoutMs } = this.settings;
    return deadline === "lookup" ? timeoutMs : deadline === "transfer" ? transferTimeoutMs : Math.max(timeoutMs * 5, 1000);
  }

  /** One guarded round trip under `deadline`; `binary` replies are Buffers (chunk data). */
  call<T>(deadline: Deadline, label: string, op: (c: Commands) => Promise<T>, binary = false): Promise<Guarded<T>> {
    const timeoutMs = this.timeoutOf(deadline);
    const connection = deadline === "transfer" ? "bulk" : "lookup";
    return this.guard.run(label, timeoutMs, async (signal) => {
      await this.connections.ready(connection);
      return op(this.connections.commands(signal, timeoutMs, { binary, connection }));
    });
  }

  lookup<T>(label: string, op: (c: Commands) => Promise<T>): Promise<Guarded<T>> {
    return this.call("lookup", label, op);
  }

  transfer<T>(label: string, op: (c: Commands) => Promise<T>, binary = false): Promise<Guarded<T>> {
    return this.call("transfer", label, op, binary);
  }

  control<T>(label: string, op: (c: Commands) => Promise<T>): Promise<Guarded<T>> {
    return this.call("control", label, op);
  }

  /** The fleet's next generation (scripts.ts: strictly increasing, never behind the server's clock). */
  async nextGeneration(deadline: "lookup" | "control"): Promise<Guarded<number>> {
    const attempt = await this.call(deadline, "reserve a generation", (c) => c.eval(NEXT_GENERATION, { keys: [this.keys.clock], arguments: [] }));
    if (!attempt.ok) return attempt;
    const generation = Number(asText(attempt.value));
    if (!Number.isSafeInteger(generation) || generation <= 0) {
      return { ok: false, reason: "error", error: new Error(`the generation clock answered ${String(attempt.value)}`) };
    }
    return { ok: true, value: generation };
  }

  /** The record of `id`, checked strictly against `id` (a record filed under the wrong key is refused). */
  async readRecord(deadline: Deadline, id: RemoteCacheId): Promise<Guarded<RecordRead>> {
    const read = await this.call(deadline, "read record", (c) => c.hGet(this.keys.heads(id.cacheKey, id.scopeId), scopeTag(id)));
    if (!read.ok) return read;
    const text = asText(read.value);
    return { ok: true, value: text === null ? null : parseRecord(text, id) };
  }

  /** Unlink a key, best effort (what is left expires). */
  async unlink(key: string): Promise<void> {
    await this.transfer("unlink", (c) => c.unlink(key));
  }

  /** Unlink the data key of a record that was replaced or removed (unless it is `keep`). */
  async unlinkDataOf(recordText: string, keep?: string): Promise<void> {
    const old = parseRecord(recordText);
    if ("error" in old) return;
    const key = this.keys.data(old.id, old.xxh64, old.dataGeneration);
    if (key !== keep) await this.unlink(key);
  }

  async close(): Promise<void> {
    await this.guard.close();
    await this.connections.close();
  }
}
