/**
 * `--remote URL` for scan, rm and gc: the fleet's shared Redis tier (kvkeep/redis), as the
 * CLI reaches it (options, connection, listings). Not a command: the commands import it.
 *
 * The `redis` client is an optional peer dependency: it and kvkeep/redis are imported only
 * when `--remote` is given, so every other command works without them. Connecting has a
 * deadline (`--remote-timeout`): a Redis that is down, refuses the credentials or does not
 * answer is one REMOTE_UNAVAILABLE line (exit 1), raised before anything is changed. A
 * Redis Cluster is recognised by its `INFO cluster` and then driven as a cluster.
 */
import { assertCacheKey, cacheKindOf } from "../keys/safe-key.js";
import { DEFAULT_TTL_SECONDS } from "../remote/redis/defaults.js";
import { assertKeyPrefix, DEFAULT_KEY_PREFIX } from "../remote/redis/keys.js";
import { withDeadline } from "../remote/guard.js";
import type { RemoteListing, RemoteTier } from "../remote/types.js";
import type { CommandContext, OptionSpec, OptionValues } from "./command.js";
import { CliError, usageError } from "./errors.js";
import { durationOption } from "./option-values.js";
import { checkRoot, type RootState } from "./root.js";

export const DEFAULT_REMOTE_TIMEOUT_MS = 3000;

/** The connection options scan, rm and gc share (spread into their option tables). */
export const REMOTE_OPTIONS: Readonly<Record<string, OptionSpec>> = {
  remote: {
    type: "string",
    value: "URL",
    help: "the shared Redis tier: redis://[user:password@]host:port[/db], or rediss:// for TLS; any node of a Redis Cluster (needs the redis package)",
  },
  "remote-prefix": { type: "string", value: "PREFIX", help: `the tier's keyPrefix, one per tenant (default ${DEFAULT_KEY_PREFIX})` },
  "remote-timeout": {
    type: "string",
    value: "DURATION",
    help: `give up on a Redis that does not answer after this long (default ${DEFAULT_REMOTE_TIMEOUT_MS / 1000}s)`,
  },
};

export interface RemoteTarget {
  url: string;
  /** The URL as printed: its password replaced by `***`. */
  shown: string;
  keyPrefix: string;
  timeoutMs: number;
}

/** The `--remote*` options, checked (USAGE errors, exit 2); null without `--remote`. */
export function remoteTarget(options: OptionValues, dependent: readonly string[] = []): RemoteTarget | null {
  const url = options.remote;
  if (typeof url !== "string") {
    const stray = ["remote-prefix", "remote-timeout", ...dependent].find((name) => options[name] !== undefined);
    if (stray) throw usageError(`--${stray} goes with --remote URL.`);
    return null;
  }
  let parsed: URL;
  try {
    if (!/^rediss?:\/\//i.test(url)) throw new Error("not a Redis URL");
    parsed = new URL(url);
  } catch {
    throw usageError(`--remote must be a Redis URL such as redis://host:6379, redis://user:password@host:6379/0 or rediss://host:6380 (got ${JSON.stringify(redact(url))}).`);
  }
  const keyPrefix = typeof options["remote-prefix"] === "string" ? options["remote-prefix"] : DEFAULT_KEY_PREFIX;
  try {
    assertKeyPrefix(keyPrefix);
  } catch {
    throw usageError(`--remote-prefix must be at most 200 characters without braces, spaces or glob characters, e.g. kvkeep:tenant-a: (got ${JSON.stringify(keyPrefix)}).`);
  }
  const timeoutMs = durationOption(options, "remote-timeout") ?? DEFAULT_REMOTE_TIMEOUT_MS;
  if (timeoutMs <= 0) throw usageError("--remote-timeout must be longer than 0, e.g. 3s.");
  if (parsed.password) parsed.password = "***";
  return { url, shown: parsed.toString(), keyPrefix, timeoutMs };
}

/** A URL for messages, password hidden, even when it does not parse. */
function redact(url: string): string {
  return url.replace(/^([a-z]+:\/\/[^:@/]*:)[^@/]*@/i, "$1***@");
}

/** `redis://127.0.0.1:6379 (prefix kvkeep:)` */
export function describeTarget(target: RemoteTarget): string {
  return `${target.shown} (prefix ${target.keyPrefix})`;
}

/** A client error as one line (a refused dual-stack connect is an AggregateError without a message). */
function errorText(error: unknown): string {
  if (error instanceof AggregateError && error.errors.length > 0) return error.errors.map(errorText).join("; ");
  if (error instanceof Error) return error.message || error.name;
  return String(error);
}

function unavailable(target: RemoteTarget, what: string, error: unknown): CliError {
  return new CliError("REMOTE_UNAVAILABLE", `${what} Redis at ${describeTarget(target)}: ${errorText(error)}`);
}

/** What a command needs of an open connection (the client is the helper's, closed by close()). */
export interface OpenRemote {
  tier: RemoteTier;
  target: RemoteTarget;
  cluster: boolean;
  close(): Promise<void>;
}

type RedisModule = typeof import("redis");
interface Connectable {
  connect(): Promise<unknown>;
  on(event: "error", listener: (error: unknown) => void): unknown;
  destroy(): unknown;
  close(): Promise<unknown>;
}

async function importRedis(): Promise<RedisModule> {
  try {
    return await import("redis");
  } catch (error) {
    if ((error as { code?: unknown } | null)?.code === "ERR_MODULE_NOT_FOUND") {
      throw new CliError("REMOTE_CLIENT_MISSING", "--remote needs the redis package (node-redis), an optional peer dependency of kvkeep: npm install redis");
    }
    throw error;
  }
}

async function closeQuietly(client: Connectable): Promise<void> {
  // A client whose connect failed is already closed; one that is connected closes cleanly.
  await Promise.resolve()
    .then(() => client.close())
    .catch(() => client.destroy());
}

/** Connect within the deadline, or fail with REMOTE_UNAVAILABLE (the client destroyed). */
async function connectWithin<C extends Connectable>(client: C, target: RemoteTarget): Promise<C> {
  // Errors surface from connect() and from each command; the event would only repeat them.
  client.on("error", () => {});
  const connected = await withDeadline("connecting", target.timeoutMs, () => client.connect());
  if (!connected.ok) {
    try {
      client.destroy();
    } catch {
      // never connected: nothing to destroy
    }
    throw unavailable(target, `cannot reach`, connected.error);
  }
  return client;
}

/**
 * Connect to the tier at `target`. The client never reconnects (a CLI run is short: a
 * dropped connection fails the command, it does not wait), every call has the deadline.
 */
export async function openRemote(target: RemoteTarget): Promise<OpenRemote> {
  const redis = await importRedis();
  const socket = { connectTimeout: target.timeoutMs, reconnectStrategy: false as const };
  const single = await connectWithin(redis.createClient({ url: target.url, socket }), target);
  let client: Connectable = single;
  let cluster = false;
  const info = await withDeadline("INFO cluster", target.timeoutMs, () => single.info("cluster"));
  if (!info.ok) {
    await closeQuietly(single);
    throw unavailable(target, "no answer from", info.error);
  }
  if (/^cluster_enabled:1\b/m.test(String(info.value))) {
    await closeQuietly(single);
    cluster = true;
    // Nodes found through the cluster get the URL's credentials and TLS too.
    const u = new URL(target.url);
    const defaults = {
      ...(u.username ? { username: decodeURIComponent(u.username) } : {}),
      ...(u.password ? { password: decodeURIComponent(u.password) } : {}),
      socket: { ...socket, ...(u.protocol === "rediss:" ? { tls: true as const } : {}) },
    };
    client = await connectWithin(redis.createCluster({ rootNodes: [{ url: target.url }], defaults }), target);
  }
  const { createRedisTier } = await import("../remote/redis/index.js");
  const tier = createRedisTier({
    client: client as unknown as Parameters<typeof createRedisTier>[0]["client"],
    keyPrefix: target.keyPrefix,
    timeoutMs: target.timeoutMs,
    transferTimeoutMs: target.timeoutMs,
  });
  return {
    tier,
    target,
    cluster,
    close: async () => {
      await tier.close();
      await closeQuietly(client);
    },
  };
}

/** Open the tier, run `work`, close it whatever happens. */
export async function withRemote<T>(target: RemoteTarget, work: (remote: OpenRemote) => Promise<T>): Promise<T> {
  const remote = await openRemote(target);
  try {
    return await work(remote);
  } finally {
    await remote.close();
  }
}

/** Every state the tier lists (or one key's), as REMOTE_UNAVAILABLE with the URL when it cannot. */
export async function listRemote(
  remote: OpenRemote,
  filter?: { cacheKey: string; modelId?: string | undefined; scopeId?: string | null | undefined },
): Promise<RemoteListing[]> {
  if (filter) assertCacheKey(filter.cacheKey, "cacheKey");
  const out: RemoteListing[] = [];
  try {
    for await (const state of remote.tier.list(filter ? { cacheKey: filter.cacheKey, scopeId: filter.scopeId ?? null } : undefined)) {
      if (filter?.modelId === undefined || state.id.modelId === filter.modelId) out.push(state);
    }
  } catch (error) {
    throw unavailable(remote.target, "cannot list the states in", error);
  }
  return out;
}

/** A remote state as scan and gc print it in JSON. */
export function listingJson(state: RemoteListing, now: number) {
  return {
    scopeId: state.id.scopeId ?? null,
    cacheKey: state.id.cacheKey,
    modelId: state.id.modelId,
    fingerprint: state.id.fingerprint,
    configHash: state.id.configHash,
    kind: cacheKind(state),
    bytes: state.size,
    tokenChunks: state.tokenChunks?.ids.length ?? 0,
    messageCount: state.messageCount,
    tokenCount: state.tokenCount,
    generation: state.generation,
    committedAt: new Date(state.committedAt).toISOString(),
    lastUsed: state.idleMs === null ? null : new Date(now - state.idleMs).toISOString(),
    idleMs: state.idleMs,
    expiresInMs: state.expiresInMs,
    problem: remoteProblem(state),
  };
}

export function cacheKind(state: RemoteListing): "auto" | "named" {
  return cacheKindOf(state.id.cacheKey);
}

/** Why a fetch of it would miss, or null. */
export function remoteProblem(state: RemoteListing): string | null {
  return state.whole ? null : "chunks gone (evicted or expired): a fetch misses";
}

/**
 * When a state was last used, as far as anyone can tell: from the server's idle time, else
 * (an LFU policy tracks none) its commit, never later than now.
 */
export function lastUseOf(state: RemoteListing, now: number): number {
  return state.idleMs !== null ? now - state.idleMs : Math.min(state.committedAt, now);
}

/** `45 s`, `12 min`, `5 h`, `7 d`: rounded, so a TTL of 7 days a second in is still `7 d`. */
export function formatSpan(ms: number): string {
  if (ms < 59_500) return `${Math.round(ms / 1000)} s`;
  if (ms < 3_570_000) return `${Math.round(ms / 60_000)} min`;
  if (ms < 47.5 * 3_600_000) return `${Math.round(ms / 3_600_000)} h`;
  return `${Math.round(ms / 86_400_000)} d`;
}

/** `in 7 d`, `in 3 h`, `never`. */
export function formatExpiry(ms: number | null): string {
  return ms === null ? "never" : `in ${formatSpan(ms)}`;
}

/** `12 states, 48 MiB` totals by kind. */
export function remoteTotals(states: readonly RemoteListing[]): { states: number; bytes: number; autoBytes: number; namedBytes: number } {
  const sum = { states: 0, bytes: 0, autoBytes: 0, namedBytes: 0 };
  for (const s of states) {
    sum.states++;
    sum.bytes += s.size;
    if (cacheKind(s) === "auto") sum.autoBytes += s.size;
    else sum.namedBytes += s.size;
  }
  return sum;
}

/** How remote states age out on their own (gc's message when it evicts none for age or size). */
export function ttlNote(soonestExpiryMs: number | null): string {
  const soonest = soonestExpiryMs === null ? "" : `; the soonest here ${formatExpiry(soonestExpiryMs)}`;
  return `each expires by its TTL (${formatSpan(DEFAULT_TTL_SECONDS * 1000)} after its last upload or download unless the writers set ttlSeconds${soonest}), and Redis evicts by its maxmemory policy`;
}

/**
 * The local root for rm and gc: with --remote, a missing root is no local caches (the
 * remote tier alone, said on stderr), not an error. Null then.
 */
export async function localRoot(ctx: CommandContext, target: RemoteTarget | null): Promise<RootState | null> {
  try {
    return await checkRoot(ctx.root);
  } catch (error) {
    if (target === null || !(error instanceof CliError) || error.code !== "ROOT_MISSING") throw error;
    ctx.note(`kvkeep: no cache root at ${ctx.root}: only the remote tier`);
    return null;
  }
}

export function sumSizes(states: readonly RemoteListing[]): number {
  return states.reduce((sum, s) => sum + s.size, 0);
}
