/**
 * Where everything lives under a cache root (pure: no I/O).
 *
 *   <root>/<cacheKey>/<modelId>/<configHash>.bin         the engine's state file (the cache)
 *   <root>/<cacheKey>/<modelId>/<configHash>.meta.json   its manifest
 *   <root>/<cacheKey>/<modelId>/<configHash>.lock        its cross-process lock (native addon only)
 *   <root>/<cacheKey>/<modelId>/<name>.<pid>-<stamp>-<rand>.tmp  temp files: turn saves, manifest writes
 *   <root>/.kvkeep/                                     kvkeep's own files (logs, settings, …)
 *   <root>/.kvkeep/root.json                            the marker that makes the directory a root
 */
import os from "node:os";
import path from "node:path";
import { INTERNAL_DIR_NAME } from "../keys/safe-key.js";

export const CACHE_SUFFIX = ".bin";
export const MANIFEST_SUFFIX = ".meta.json";
export const LOCK_SUFFIX = ".lock";
export const TEMP_SUFFIX = ".tmp";

export interface CacheLocation {
  cacheKey: string;
  modelId: string;
  configHash: string;
}

/** `$KVKEEP_DIR`, else `$XDG_CACHE_HOME/kvkeep`, else `~/.cache/kvkeep`. */
export function defaultRoot(env: NodeJS.ProcessEnv = process.env): string {
  if (env.KVKEEP_DIR) return path.resolve(env.KVKEEP_DIR);
  if (env.XDG_CACHE_HOME) return path.resolve(env.XDG_CACHE_HOME, "kvkeep");
  return path.join(os.homedir(), ".cache", "kvkeep");
}

export function internalDir(root: string): string {
  return path.join(root, INTERNAL_DIR_NAME);
}

export function cacheKeyDir(root: string, cacheKey: string): string {
  return path.join(root, cacheKey);
}

export function cacheDir(root: string, loc: CacheLocation): string {
  return path.join(root, loc.cacheKey, loc.modelId);
}

export function cachePathOf(root: string, loc: CacheLocation): string {
  return path.join(root, loc.cacheKey, loc.modelId, loc.configHash + CACHE_SUFFIX);
}

function stem(cachePath: string): string {
  return cachePath.endsWith(CACHE_SUFFIX) ? cachePath.slice(0, -CACHE_SUFFIX.length) : cachePath;
}

export function manifestPathOf(cachePath: string): string {
  return stem(cachePath) + MANIFEST_SUFFIX;
}

export function lockPathOf(cachePath: string): string {
  return stem(cachePath) + LOCK_SUFFIX;
}

let tempCounter = 0;

/**
 * A temp path beside `target`, unique in this process and across processes (pid), so
 * recovery can tell whose it is: `<target>.<pid>-<stamp>-<counter><rand>.tmp`. `stamp`
 * tells this process apart from an earlier one with the same pid (another boot, a reused
 * pid: see src/durable/temp-owner.ts); without one the name is `<target>.<pid>-<unique>.tmp`.
 */
export function tempPathFor(target: string, pid: number = process.pid, stamp?: string): string {
  tempCounter = (tempCounter + 1) % 0x1000000;
  const unique = tempCounter.toString(36) + Math.floor(Math.random() * 0x10000).toString(36);
  return `${target}.${pid}-${stamp ? `${stamp}-` : ""}${unique}${TEMP_SUFFIX}`;
}

/** Who made a temp file, from its name (`stamp` null for a name without one); undefined if not a kvkeep temp. */
export function tempOwner(fileName: string): { pid: number; stamp: string | null } | undefined {
  const match = /\.(\d+)-(?:([0-9a-z]+)-)?[0-9a-z]+\.tmp$/.exec(fileName);
  return match ? { pid: Number(match[1]), stamp: match[2] ?? null } : undefined;
}

/** The pid that made a temp file, from its name; undefined if the name is not a kvkeep temp. */
export function tempOwnerPid(fileName: string): number | undefined {
  return tempOwner(fileName)?.pid;
}

export type CacheFileKind = "cache" | "manifest" | "lock" | "temp";

/**
 * The only temps kvkeep writes in a model directory: beside a cache file or a manifest,
 * `<configHash>.bin.<owner>.tmp` or `<configHash>.meta.json.<owner>.tmp` (see tempPathFor).
 * A user's `report.1234-abc.tmp` does not fit, so no sweep ever takes it for a dead writer's.
 */
const CACHE_DIR_TEMP = /^([A-Za-z0-9_-]{1,128})\.(?:bin|meta\.json)\.\d+-(?:[0-9a-z]+-)?[0-9a-z]+\.tmp$/;

/**
 * What a file in a model directory is, by its name; null for a name kvkeep never gives a
 * file there. A name is a claim, not a proof: a cache, manifest or lock file is removed only
 * once its contents prove it kvkeep's (src/manifest/ownership.ts).
 */
export function classifyFileName(fileName: string): { kind: CacheFileKind; configHash: string } | null {
  if (fileName.endsWith(TEMP_SUFFIX)) {
    const temp = CACHE_DIR_TEMP.exec(fileName);
    return temp ? { kind: "temp", configHash: temp[1]! } : null;
  }
  for (const [suffix, kind] of [
    [MANIFEST_SUFFIX, "manifest"],
    [CACHE_SUFFIX, "cache"],
    [LOCK_SUFFIX, "lock"],
  ] as const) {
    if (fileName.endsWith(suffix)) {
      const configHash = fileName.slice(0, -suffix.length);
      if (/^[A-Za-z0-9_-]{1,128}$/.test(configHash)) return { kind, configHash };
    }
  }
  return null;
}

/**
 * The location of a cache path under `root`, or null when the path is not exactly
 * `<root>/<key>/<model>/<hash>.bin` (used to refuse commit targets outside the root).
 */
export function parseCachePath(root: string, cachePath: string): CacheLocation | null {
  const rel = path.relative(root, path.resolve(cachePath));
  if (rel.startsWith("..") || path.isAbsolute(rel)) return null;
  const parts = rel.split(path.sep);
  if (parts.length !== 3) return null;
  const [cacheKey, modelId, fileName] = parts as [string, string, string];
  const kind = classifyFileName(fileName);
  if (kind?.kind !== "cache" || cacheKey === INTERNAL_DIR_NAME) return null;
  return { cacheKey, modelId, configHash: kind.configHash };
}

/** True when `child` is `dir` itself or inside it. */
export function isWithin(dir: string, child: string): boolean {
  const rel = path.relative(dir, child);
  return rel === "" || (!rel.startsWith("..") && !path.isAbsolute(rel));
}
