/**
 * What the root catalog knows about one cache (pure): its index entry, and the prefix facts
 * the prefix index answers from. The catalog builds entries from the disk, this store's
 * turns and other processes' log records; the sweeper plans over them.
 */
import { chunkByteLength, decodeKvGeometry } from "../chunks/state-format.js";
import { cacheKindOf } from "../keys/safe-key.js";
import type { CacheLocation } from "../layout/paths.js";
import type { ManifestEntry } from "../manifest/format.js";

/** What the index knows about one cache. */
export interface IndexEntry {
  /** The cache's scope id; null or absent for the shared space (see CacheLocation). */
  scopeId?: string | null | undefined;
  cacheKey: string;
  modelId: string;
  configHash: string;
  /** `auto`: an auto-mode key (evictable by default); `named`: a custom key (the user's). */
  kind: "auto" | "named";
  bytes: number;
  /** Last use (a turn that loaded it, or a commit/prime that wrote it), ms since the epoch. */
  lastUsedMs: number;
  /** What the state holds, for the prefix index (src/prefix/); absent when unknown. */
  prefix?: PrefixInfo | null | undefined;
  /**
   * A chunked cache's full chunks (`bytes` is then its tail only): shared with every other
   * cache naming the same ids, counted once in physical bytes. Absent for a whole-file cache.
   */
  chunks?: ChunkRefs | null | undefined;
}

/** The chunks a chunked cache names, as the catalog counts them. */
export interface ChunkRefs {
  /** The state context's digest (the chunks' directory). */
  context: string;
  /** Full chunk ids, in order. */
  ids: readonly string[];
  /** Bytes of each of them (they all hold chunkTokens tokens of one geometry). */
  chunkBytes: number;
}

/** The part of a cache's manifest entry the prefix index needs. */
export interface PrefixInfo {
  fingerprint: string | null;
  /** Message keys 1…k of the conversation the state holds. */
  chain: readonly string[];
  messageCount: number;
  tokenCount: number | null;
}

/**
 * A use time read back from disk (a file's mtime, ms) may round a millisecond below the
 * time kvkeep set or recorded; anything later than this is a use the index did not know of.
 */
export const USE_TIME_SLACK_MS = 1;

/**
 * A last use read from the disk (a manifest's mtime) or from another process's record, as
 * retention may believe it: never later than `now`. A time in the future — a skewed clock,
 * a restored or hand-touched file — would otherwise exempt a cache from idle eviction for
 * as long as it lies ahead, whatever `maxIdleMs` says (even 0).
 */
export function clampUse(ms: number, now: number): number {
  return Math.min(ms, now);
}

/** The index entry of the cache at `loc`. */
export function entryFor(loc: CacheLocation, bytes: number, lastUsedMs: number, prefix: PrefixInfo | null = null, chunks: ChunkRefs | null = null): IndexEntry {
  return {
    scopeId: loc.scopeId,
    cacheKey: loc.cacheKey,
    modelId: loc.modelId,
    configHash: loc.configHash,
    kind: cacheKindOf(loc.cacheKey),
    bytes,
    lastUsedMs,
    prefix,
    chunks,
  };
}

/** Where the cache an entry describes sits in the layout. */
export function locationOf(entry: IndexEntry): CacheLocation {
  return { scopeId: entry.scopeId ?? null, cacheKey: entry.cacheKey, modelId: entry.modelId, configHash: entry.configHash };
}

/** The prefix facts of a committed entry; null when its conversation is unknown (a prime). */
export function prefixInfoOf(entry: ManifestEntry, fingerprint: string | null): PrefixInfo | null {
  if (!entry.chain || entry.chain.length === 0) return null;
  return { fingerprint, chain: entry.chain, messageCount: entry.messageCount, tokenCount: entry.tokenCount };
}

/**
 * The chunks a committed entry names, with the size each takes on disk
 * (chunkByteLength of its geometry and chunk size); null for a whole-file entry, or one whose
 * geometry does not decode (then it is counted by its tail alone).
 */
export function chunkRefsOf(entry: ManifestEntry): ChunkRefs | null {
  const chunks = entry.chunks;
  if (!chunks) return null;
  try {
    const geometry = decodeKvGeometry(Buffer.from(chunks.geometry, "base64"));
    return { context: chunks.context, ids: chunks.ids, chunkBytes: chunkByteLength(geometry, chunks.chunkTokens) };
  } catch {
    return null;
  }
}

/** Bytes the cache would take holding its own copy of every chunk: its tail plus its chunks. */
export function logicalBytesOf(entry: IndexEntry): number {
  return entry.bytes + (entry.chunks ? entry.chunks.ids.length * entry.chunks.chunkBytes : 0);
}
