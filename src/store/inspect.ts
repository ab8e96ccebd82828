/**
 * The store layer's read-only API, for the CLI's views (scan, usage, verify, rm's plan,
 * gc --dry-run, backend, --version): what is under a cache root and what a sweep would
 * evict, read without changing anything — no store is opened (opening one runs recovery,
 * which removes files), no lock is taken, no manifest is rewritten. Commands that change
 * a root open a store (src/cli/store.ts) or verify through src/store/verify-files.ts; the
 * root marker's checks are the durable layer's, passed on here.
 */
import { readFileSync, promises as fs } from "node:fs";
import path from "node:path";
import { type ChunkRefs, chunkRefsOf, type IndexEntry } from "../catalog/entry.js";
import { listKeyDirs, listScopeIds, scanKeyDir, type ScannedModelDir, scanRoot } from "../catalog/scan.js";
import { errnoCode } from "../errors.js";
import { cacheKindOf } from "../keys/safe-key.js";
import { cachePathOf } from "../layout/paths.js";
import { manifestNames } from "../manifest/ownership.js";
import { readLastUse, readManifest } from "../manifest/store.js";
import { loadNativeFs, type NativeBackendKind } from "../native/index.js";
import { findPackageRoot } from "../native/paths.js";
import { type Candidate, chunkCountsOf, PlanChunkRefs, planSweep, type RetentionLimits } from "../retention/plan.js";
import type { EvictedCache } from "../types.js";

export { inspectRoot, notARootError, type RootKind, writeRootMarker } from "../durable/root-marker.js";
export { DEFAULT_MAX_BYTES, DEFAULT_MAX_IDLE_MS } from "../retention/plan.js";
export type { Candidate, IndexEntry, RetentionLimits };

export interface CacheRecord {
  /** The scope's id (never the scope itself: kvkeep does not know it), or null for the shared space. */
  scopeId: string | null;
  cacheKey: string;
  modelId: string;
  configHash: string;
  kind: "auto" | "named";
  cachePath: string;
  bytes: number;
  /** Messages the committed state covers; null without a readable manifest. */
  messageCount: number | null;
  /** Last use: the manifest's mtime (set by every load and commit), else the file's. */
  lastUsedMs: number;
  /** Whether a manifest file exists beside it. */
  hasManifest: boolean;
  /**
   * Whether it is provably kvkeep's: its manifest is a kvkeep manifest naming it (a store's
   * retention counts only these, and only these are ever removed).
   */
  owned: boolean;
  /** Why a turn would not trust it, as far as a read-only look can tell; null when it looks fine. */
  problem: string | null;
  /** `chunked`: the file is the tail and `chunks` names the rest (docs/chunks-format.md); `whole`: the file is the state. */
  layout: "chunked" | "whole";
  chunks: ChunkRefs | null;
  /** The state's size with every chunk it names: `bytes` for a whole-file cache. */
  logicalBytes: number;
}

export interface RootContents {
  caches: CacheRecord[];
  /** Temp files of writers (a live turn's save, or a crashed writer's leftover). */
  temps: { count: number; bytes: number };
}

async function sizeOf(filePath: string): Promise<{ bytes: number; mtimeMs: number } | null> {
  try {
    const st = await fs.lstat(filePath);
    return st.isFile() ? { bytes: st.size, mtimeMs: st.mtimeMs } : null;
  } catch (error) {
    if (errnoCode(error) === "ENOENT" || errnoCode(error) === "ENOTDIR") return null;
    throw error;
  }
}

async function recordsOf(root: string, dir: ScannedModelDir, temps?: RootContents["temps"]): Promise<CacheRecord[]> {
  const caches: CacheRecord[] = [];
  for (const file of dir.files) {
    if (file.kind === "temp" && temps) {
      const st = await sizeOf(file.path);
      if (st) {
        temps.count++;
        temps.bytes += st.bytes;
      }
    }
    if (file.kind !== "cache") continue;
    const loc = { scopeId: dir.scopeId, cacheKey: dir.cacheKey, modelId: dir.modelId, configHash: file.configHash! };
    const cachePath = cachePathOf(root, loc);
    const st = await sizeOf(cachePath);
    if (!st) continue; // removed since the directory was listed
    const read = await readManifest(cachePath);
    const entry = "manifest" in read ? (read.manifest.current ?? read.manifest.pending) : null;
    const chunks = entry ? chunkRefsOf(entry) : null;
    caches.push({
      layout: chunks ? "chunked" : "whole",
      chunks,
      logicalBytes: st.bytes + (chunks ? chunks.ids.length * chunks.chunkBytes : 0),
      scopeId: dir.scopeId,
      cacheKey: dir.cacheKey,
      modelId: dir.modelId,
      configHash: file.configHash!,
      kind: cacheKindOf(dir.cacheKey),
      cachePath,
      bytes: st.bytes,
      messageCount: entry?.messageCount ?? null,
      hasManifest: !("missing" in read),
      owned: manifestNames(read, loc),
      lastUsedMs: (await readLastUse(cachePath).catch(() => null)) ?? st.mtimeMs,
      problem:
        "manifest" in read
          ? !manifestNames(read, loc)
            ? "its manifest names another cache"
            : entry
              ? null
              : "manifest has no committed state"
          : "missing" in read
            ? "no manifest"
            : read.error,
    });
  }
  return caches;
}

/** Every cache under the root, in key order, and the temp files beside them. */
export async function readRoot(root: string): Promise<RootContents> {
  const caches: CacheRecord[] = [];
  const temps = { count: 0, bytes: 0 };
  for await (const dir of scanRoot(root)) caches.push(...(await recordsOf(root, dir, temps)));
  return { caches, temps };
}

export interface RootTotals {
  /** Physical: the cache files, plus each distinct chunk once. */
  bytes: number;
  count: number;
  autoBytes: number;
  namedBytes: number;
  autoCount: number;
  namedCount: number;
  /** Every cache with its own copy of every chunk it names. */
  logicalBytes: number;
  /** logical / physical (1 when nothing is stored). */
  sharing: number;
  chunkCount: number;
  chunkBytes: number;
}

/** Totals by kind of the caches that are kvkeep's, as `store.usage()` reports them. */
export function totals(caches: readonly CacheRecord[]): RootTotals {
  const sum = { bytes: 0, count: 0, autoBytes: 0, namedBytes: 0, autoCount: 0, namedCount: 0, logicalBytes: 0, sharing: 1, chunkCount: 0, chunkBytes: 0 };
  const chunks = new Set<string>();
  for (const c of caches) {
    if (!c.owned) continue;
    sum.bytes += c.bytes;
    sum.logicalBytes += c.logicalBytes;
    for (const id of c.chunks?.ids ?? []) {
      const key = `${c.chunks!.context}/${id}`;
      if (chunks.has(key)) continue;
      chunks.add(key);
      sum.chunkCount++;
      sum.chunkBytes += c.chunks!.chunkBytes;
    }
    sum.count++;
    if (c.kind === "auto") {
      sum.autoBytes += c.bytes;
      sum.autoCount++;
    } else {
      sum.namedBytes += c.bytes;
      sum.namedCount++;
    }
  }
  sum.bytes += sum.chunkBytes;
  if (sum.bytes > 0) sum.sharing = sum.logicalBytes / sum.bytes;
  return sum;
}

/** The caches of one key (one model, or all) in one scope's space; null when the key has no directory. */
export async function readKey(root: string, cacheKey: string, modelId: string | undefined, scopeId: string | null): Promise<CacheRecord[] | null> {
  const dirs = await scanKeyDir(root, cacheKey, modelId, false, scopeId);
  if (dirs.length === 0) return null;
  return (await Promise.all(dirs.map((d) => recordsOf(root, d)))).flat();
}

/** The isolation scopes (ids) whose space holds caches of `cacheKey` (of `modelId`, or any): where else to look. */
export async function scopesHoldingKey(root: string, cacheKey: string, modelId: string | undefined): Promise<string[]> {
  const held: string[] = [];
  for (const scopeId of await listScopeIds(root)) {
    if (((await readKey(root, cacheKey, modelId, scopeId)) ?? []).length > 0) held.push(scopeId);
  }
  return held;
}

/**
 * The caches of `modelId` in one scope's space (null: the shared space) whose key is of `kind`,
 * as the web page lists a caller's sessions: only that scope's directories are read.
 */
export async function readScopeCaches(root: string, scopeId: string | null, modelId: string, kind: "named" | "auto"): Promise<CacheRecord[]> {
  const caches: CacheRecord[] = [];
  for (const key of await listKeyDirs(root, scopeId)) {
    if (cacheKindOf(key) !== kind) continue;
    for (const dir of await scanKeyDir(root, key, modelId, false, scopeId)) caches.push(...(await recordsOf(root, dir)));
  }
  return caches;
}

/**
 * What a sweep with this plan's limits evicts: the idle entries, then the least recently used
 * until the rest fit in `maxBytes` (what retention's executor does, minus its locks and
 * re-checks, which can only keep more). `keptBytes`: the evictable bytes left.
 */
export function planEvictions(entries: Iterable<[string, IndexEntry]>, limits: RetentionLimits, now: number): { victims: Candidate[]; keptBytes: number } {
  const list = [...entries];
  const plan = planSweep(list, limits, now);
  // Physical bytes, as a store's sweep plans: a cache's file plus the chunks only it names.
  const counts = chunkCountsOf(list, limits.evictNamed);
  const refs = new PlanChunkRefs((context, id) => counts.refs.get(`${context}/${id}`) ?? 0);
  const victims: Candidate[] = [...plan.idle];
  let remaining = counts.evictableBytes - victims.reduce((sum, c) => sum + refs.take(c.entry), 0);
  const order = plan.budgetOrder();
  for (let next = order.next(); remaining > limits.maxBytes && !next.done; next = order.next()) {
    victims.push(next.value);
    remaining -= refs.take(next.value.entry);
  }
  return { victims, keptBytes: remaining };
}

/** What a sweep with these limits would evict from the root, from a read-only look at it. */
export async function planRootSweep(root: string, limits: RetentionLimits): Promise<{ evicted: EvictedCache[]; keptBytes: number }> {
  const { caches } = await readRoot(root);
  const entries: Array<[string, IndexEntry]> = caches
    .filter((c) => c.owned)
    .map((c) => [
      c.cachePath,
      { scopeId: c.scopeId, cacheKey: c.cacheKey, modelId: c.modelId, configHash: c.configHash, kind: cacheKindOf(c.cacheKey), bytes: c.bytes, lastUsedMs: c.lastUsedMs, chunks: c.chunks },
    ]);
  const { victims, keptBytes } = planEvictions(entries, limits, Date.now());
  return { evicted: victims.map(evictedOf), keptBytes };
}

const evictedOf = (c: Candidate): EvictedCache => ({
  scopeId: c.entry.scopeId ?? null,
  cacheKey: c.entry.cacheKey,
  modelId: c.entry.modelId,
  configHash: c.entry.configHash,
  bytes: c.entry.bytes,
  reason: c.reason,
});

/** Which file-system backend kvkeep loads in this installation (kvkeep backend). */
export function nativeBackend(): { kind: NativeBackendKind; crossProcessLocks: boolean; binaryPath: string | null } {
  const backend = loadNativeFs();
  return { kind: backend.kind, crossProcessLocks: backend.crossProcessLocks, binaryPath: backend.binaryPath };
}

/** This installation's kvkeep version (its package.json), or "unknown". */
export function kvkeepVersion(): string {
  const root = findPackageRoot();
  if (root === null) return "unknown";
  return (JSON.parse(readFileSync(path.join(root, "package.json"), "utf8")) as { version: string }).version;
}
