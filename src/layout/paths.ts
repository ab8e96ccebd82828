/**
 * Where everything lives under a cache root (pure: no I/O).
 *
 *   <root>/<cacheKey>/<modelId>/<configHash>.bin         the engine's state file (the cache)
 *   <root>/<cacheKey>/<modelId>/<configHash>.meta.json   its manifest
 *   <root>/<cacheKey>/<modelId>/<configHash>.lock        its cross-process lock (native addon only)
 *   <root>/<cacheKey>/<modelId>/<name>.<pid>-<stamp>-<rand>.tmp  temp files: turn saves, manifest writes
 *   <root>/.kvkeep/                                     kvkeep's own files (logs, settings, …)
 *   <root>/.kvkeep/root.json                            the marker that makes the directory a root
 *
 * A scoped cache (src/keys/scope.ts) lives in its scope's own space, the same layout one
 * level down: `<root>/.scopes/<scope id>/<cacheKey>/<modelId>/<configHash>.bin`. `.scopes`
 * can never be a cache key, and a scope id is 32 hex chars, so the two layouts never meet:
 * a root without scopes looks exactly as before.
 */
import path from "node:path";
import { INTERNAL_DIR_NAME, isReservedRootName, SCOPES_DIR_NAME } from "../keys/safe-key.js";
import { SCOPE_ID_PATTERN } from "../keys/scope.js";

export const CACHE_SUFFIX = ".bin";
export const MANIFEST_SUFFIX = ".meta.json";
export const LOCK_SUFFIX = ".lock";
export const TEMP_SUFFIX = ".tmp";

export interface CacheLocation {
  /** The scope's id (src/keys/scope.ts), or null for the shared space. */
  scopeId: string | null;
  cacheKey: string;
  modelId: string;
  configHash: string;
}

/** The directory levels from the root down to a scope's space: none for the shared space. */
export function scopeComponents(scopeId: string | null): string[] {
  return scopeId === null ? [] : [SCOPES_DIR_NAME, scopeId];
}

/** `<root>/.scopes/<id>` for a scope, the root itself for the shared space. */
export function spaceDir(root: string, scopeId: string | null): string {
  return path.join(root, ...scopeComponents(scopeId));
}

/** The directory levels from the root to a cache's model directory (for mkdir and lstat walks). */
export function cacheDirComponents(loc: Omit<CacheLocation, "configHash">): string[] {
  return [...scopeComponents(loc.scopeId), loc.cacheKey, loc.modelId];
}

/** `<scope prefix><key>/<model>/<hash>.bin`, relative to the root with `/` separators (index-log records). */
export function relativeCachePath(loc: CacheLocation): string {
  return [...cacheDirComponents(loc), loc.configHash + CACHE_SUFFIX].join("/");
}


export function internalDir(root: string): string {
  return path.join(root, INTERNAL_DIR_NAME);
}

export function cacheKeyDir(root: string, cacheKey: string, scopeId: string | null = null): string {
  return path.join(spaceDir(root, scopeId), cacheKey);
}

export function cacheDir(root: string, loc: CacheLocation): string {
  return path.join(root, ...cacheDirComponents(loc));
}

export function cachePathOf(root: string, loc: CacheLocation): string {
  return path.join(cacheDir(root, loc), loc.configHash + CACHE_SUFFIX);
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
 * `<root>/<key>/<model>/<hash>.bin` or `<root>/.scopes/<scope id>/<key>/<model>/<hash>.bin`
 * (used to refuse commit targets outside the root, and to read index-log records).
 */
export function parseCachePath(root: string, cachePath: string): CacheLocation | null {
  const rel = path.relative(root, path.resolve(cachePath));
  if (rel.startsWith("..") || path.isAbsolute(rel)) return null;
  return parseRelativeParts(rel.split(path.sep));
}

/** The location named by the components of a path relative to the root, or null (see parseCachePath). */
export function parseRelativeParts(parts: readonly string[]): CacheLocation | null {
  let scopeId: string | null = null;
  let rest = parts;
  if (parts.length === 5) {
    if (parts[0] !== SCOPES_DIR_NAME || !SCOPE_ID_PATTERN.test(parts[1]!)) return null;
    scopeId = parts[1]!;
    rest = parts.slice(2);
  }
  if (rest.length !== 3) return null;
  const [cacheKey, modelId, fileName] = rest as [string, string, string];
  const kind = classifyFileName(fileName);
  if (kind?.kind !== "cache" || isReservedRootName(cacheKey) || cacheKey.length === 0 || modelId.length === 0) return null;
  return { scopeId, cacheKey, modelId, configHash: kind.configHash };
}

/**
 * Whether a directory below the root (its path components relative to the root) is one of
 * the levels kvkeep makes, and so may be pruned once empty: in the shared space a key
 * directory and its model directories (`<key>`, `<key>/<model>`); for scopes `.scopes`, a
 * scope's space `.scopes/<id>` — kvkeep's by its name, a scope id's form — and the key and
 * model levels in it. Deeper levels, `.kvkeep` and anything under `.scopes` not named like
 * a scope id are never kvkeep's to remove.
 */
export function isOwnDirLevel(parts: readonly string[]): boolean {
  if (parts.length === 0 || parts.some((part) => part.length === 0)) return false;
  if (parts[0] === SCOPES_DIR_NAME) return parts.length <= 4 && (parts.length < 2 || SCOPE_ID_PATTERN.test(parts[1]!));
  return parts.length <= 2 && !isReservedRootName(parts[0]!);
}

/** True when `child` is `dir` itself or inside it. */
export function isWithin(dir: string, child: string): boolean {
  const rel = path.relative(dir, child);
  return rel === "" || (!rel.startsWith("..") && !path.isAbsolute(rel));
}
