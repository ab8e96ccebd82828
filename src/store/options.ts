/**
 * What `openKvCacheStore` takes, checked once: a misspelled or mistyped option fails at open
 * with INVALID_ARGUMENT instead of its default being used silently.
 */
import os from "node:os";
import path from "node:path";
import { KvKeepError } from "../errors.js";
import { assertLogger, type Logger, silentLogger } from "../logger.js";
import type { RemoteTier } from "../remote/types.js";
import { type RetentionInternals, type RetentionSettings, resolveRetentionSettings } from "../retention/retention.js";
import { didYouMean } from "../suggest.js";
import type { RemoteSyncInternals } from "./remote-sync.js";

export interface KvCacheStoreOptions {
  /** The cache root. Default: `$KVKEEP_DIR`, else `$XDG_CACHE_HOME/kvkeep`, else `~/.cache/kvkeep`. */
  root?: string | undefined;
  /** Where kvkeep logs (any `{ debug, info, warn, error }`, e.g. `console` or pino). Default: silent. */
  logger?: Logger | undefined;
  /**
   * What `rollback` does (a session may override it). `"keep-committed"` (default): keep the
   * last committed state when the turn never touched `cachePath` — kvkeep's commits are
   * atomic, so a cancelled turn (a Stop button) costs the user nothing. `"clear"`: the seed
   * contract's three-layer clear — file, saved count and init flag (what the module-level
   * `createKvCacheSession` uses).
   */
  onRollback?: "clear" | "keep-committed" | undefined;
  /**
   * How a cache is checked before its first use by this store. `"size"` (default): a valid
   * manifest for this model, and a file whose size, inode and mtime match it (a checksum
   * only when those disagree). `"checksum"`: also the file's XXH64, once per file per store.
   */
  verify?: "size" | "checksum" | undefined;
  /**
   * Disk budget in bytes for the *evictable* caches — auto-mode caches, plus named
   * (custom-key) ones only with `evictNamed`. A sweep evicts the least recently used of
   * them until they fit (caches in use are never evicted, so they may stay above it).
   * Named caches are not counted against it unless `evictNamed`; `usage()` reports
   * everything on disk. Default: 4 GiB (pass e.g. 512 MiB on mobile).
   */
  maxBytes?: number | undefined;
  /**
   * Evictable caches not used for this long (ms) are evicted first. A use is a turn that
   * loaded the cache or a commit that wrote it. Default: 24 h (86 400 000).
   */
  maxIdleMs?: number | undefined;
  /**
   * A sweep starts in the background after a commit when the last one started at least
   * this long ago (ms); never on the path of `beginTurn`, and no timer is kept.
   * Default: 5 min (300 000).
   */
  sweepIntervalMs?: number | undefined;
  /**
   * Let sweeps evict named (custom-key) caches too, and count them against `maxBytes`.
   * Default: false — named caches are the user's; only auto caches are evicted.
   */
  evictNamed?: boolean | undefined;
  /**
   * A shared remote tier behind the local one, e.g. `createRedisTier({ url })` from
   * `kvkeep/redis`: commits are uploaded in the background, a local miss asks it, deletes
   * reach it. The store owns it from here on: `close()` finishes pending uploads and closes it.
   */
  remote?: RemoteTier | undefined;
  /** Uploads waiting for the remote tier at most, one per cache (the oldest is dropped past it). Default 64. */
  maxPendingUploads?: number | undefined;
  /**
   * Open a non-empty directory that is not marked as a kvkeep root (no `.kvkeep/root.json`,
   * e.g. caches copied or restored without their `.kvkeep/`) and mark it. Without it such a
   * directory is refused with ROOT_NOT_KVKEEP and left untouched. Either way kvkeep only
   * ever removes files it can prove are its own. Default: false.
   */
  adopt?: boolean | undefined;
}

/** Options for tests and benchmarks; not part of the public API. @internal */
export interface InternalStoreOptions {
  retentionInternals?: RetentionInternals | undefined;
  remoteInternals?: RemoteSyncInternals | undefined;
}

/**
 * Every option the constructor accepts. Typed as a record of the options' keys, so a new
 * option fails to compile until it is listed here (and is then accepted).
 */
const KNOWN_STORE_OPTIONS: Record<keyof (KvCacheStoreOptions & InternalStoreOptions), true> = {
  root: true,
  logger: true,
  onRollback: true,
  verify: true,
  maxBytes: true,
  maxIdleMs: true,
  sweepIntervalMs: true,
  evictNamed: true,
  remote: true,
  maxPendingUploads: true,
  adopt: true,
  retentionInternals: true,
  remoteInternals: true,
};

/** A misspelled option (`maxByte`) would otherwise be ignored silently and its default used. */
function assertKnownStoreOptions(options: unknown): void {
  if (options === undefined) return;
  if (options === null || typeof options !== "object" || Array.isArray(options)) {
    throw new KvKeepError("INVALID_ARGUMENT", "openKvCacheStore takes an options object or nothing.", { argument: "options" });
  }
  const known = Object.keys(KNOWN_STORE_OPTIONS);
  for (const name of Object.keys(options)) {
    if (!Object.hasOwn(KNOWN_STORE_OPTIONS, name)) {
      throw new KvKeepError(
        "INVALID_ARGUMENT",
        `unknown store option ${JSON.stringify(name)}${didYouMean(name, known)}; the options are ${known.filter((k) => k !== "retentionInternals" && k !== "remoteInternals").join(", ")}.`,
        { argument: name },
      );
    }
  }
}

/** `$KVKEEP_DIR`, else `$XDG_CACHE_HOME/kvkeep`, else `~/.cache/kvkeep`. */
export function defaultRoot(env: NodeJS.ProcessEnv = process.env): string {
  if (env.KVKEEP_DIR) return path.resolve(env.KVKEEP_DIR);
  if (env.XDG_CACHE_HOME) return path.resolve(env.XDG_CACHE_HOME, "kvkeep");
  return path.join(os.homedir(), ".cache", "kvkeep");
}

/** The store's options, checked, with their defaults. */
export interface ResolvedStoreOptions {
  root: string;
  logger: Logger;
  onRollback: "clear" | "keep-committed";
  verify: "size" | "checksum";
  adopt: boolean;
  remote: RemoteTier | null;
  retention: RetentionSettings;
}

/** Check every option (INVALID_ARGUMENT naming the first bad one) and fill in the defaults. */
export function resolveStoreOptions(options: KvCacheStoreOptions & InternalStoreOptions): ResolvedStoreOptions {
  assertKnownStoreOptions(options);
  if (options.logger !== undefined) assertLogger(options.logger, "logger");
  if (options.root !== undefined && (typeof options.root !== "string" || options.root.length === 0)) {
    throw new KvKeepError("INVALID_ARGUMENT", "options.root must be a non-empty path.", { argument: "root" });
  }
  if (options.onRollback !== undefined && options.onRollback !== "clear" && options.onRollback !== "keep-committed") {
    throw new KvKeepError("INVALID_ARGUMENT", `options.onRollback must be "clear" or "keep-committed".`, {
      argument: "onRollback",
    });
  }
  if (options.verify !== undefined && options.verify !== "size" && options.verify !== "checksum") {
    throw new KvKeepError("INVALID_ARGUMENT", `options.verify must be "size" or "checksum".`, { argument: "verify" });
  }
  if (options.adopt !== undefined && typeof options.adopt !== "boolean") {
    throw new KvKeepError("INVALID_ARGUMENT", "options.adopt must be a boolean.", { argument: "adopt" });
  }
  const remote = checkRemoteOptions(options);
  const retentionSettings = resolveRetentionSettings(options);
  return {
    root: path.resolve(options.root ?? defaultRoot()),
    logger: options.logger ?? silentLogger,
    onRollback: options.onRollback ?? "keep-committed",
    verify: options.verify ?? "size",
    adopt: options.adopt === true,
    remote,
    retention: retentionSettings,
  };
}

function checkRemoteOptions(options: KvCacheStoreOptions): RemoteTier | null {
  const { remote, maxPendingUploads } = options;
  if (maxPendingUploads !== undefined && (!Number.isSafeInteger(maxPendingUploads) || maxPendingUploads < 1)) {
    throw new KvKeepError("INVALID_ARGUMENT", "options.maxPendingUploads must be a positive integer.", { argument: "maxPendingUploads" });
  }
  if (remote === undefined) return null;
  const methods = ["reserve", "upload", "has", "fetchTo", "lookupPrefix", "remove", "close", "setLogger"] as const;
  if (!remote || typeof remote !== "object" || methods.some((m) => typeof remote[m] !== "function")) {
    throw new KvKeepError("INVALID_ARGUMENT", "options.remote must be a remote tier, e.g. createRedisTier({ url }) from kvkeep/redis.", {
      argument: "remote",
    });
  }
  return remote;
}
