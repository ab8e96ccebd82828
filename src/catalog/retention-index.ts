/**
 * The retention index: cache path → what retention needs to know (kind, bytes, last use),
 * with running totals so `usage()` is O(1). Pure bookkeeping, no I/O; one owner (the
 * store's `Retention`).
 *
 * Changes arrive out of order from several sources — this store's own turns, other
 * processes' log records, a rescan of the disk — so each is applied with a time guard:
 * nothing older than what the index already knows about a cache overrides it. A rebuild
 * (the disk walk at open, or a resync) runs while turns go on: changes noted during it are
 * replayed onto the rebuilt map, so the walk never resurrects or loses what a turn did.
 * Entries are immutable once stored (a change stores a new object), so a sweep's plan
 * still says what the index knew when it was made.
 *
 * The prefix index (`prefix`) is a second view of the same entries: it changes exactly when
 * an entry is stored or removed here, so both answer from the same knowledge of the root.
 *
 * Chunks (docs/chunks-format.md) are counted by reference: each chunk a cache names
 * (`<context>/<id>`) has a count of the caches naming it (and of the named ones among them),
 * kept with every put and remove. A chunk's bytes count once in physical bytes however many
 * caches name it; an entry's `bytes` is then its tail alone.
 */
import { PrefixIndex } from "../prefix/prefix-index.js";
import { snapshotRecordBytes } from "./log-record.js";
import { type IndexEntry, logicalBytesOf } from "./entry.js";

export interface IndexUsage {
  /** Physical: every cache file (whole states, tails) plus every distinct chunk once. */
  bytes: number;
  count: number;
  /** Cache files of auto / named caches (whole states, tails; chunks are in `chunkBytes`). */
  autoBytes: number;
  namedBytes: number;
  /** What the caches would take each holding its own copy of every chunk it names. */
  logicalBytes: number;
  /** Distinct chunks named by the caches, and their bytes. */
  chunkCount: number;
  chunkBytes: number;
}

/** How many caches name one chunk. */
interface ChunkCount {
  refs: number;
  /** Of those, named (custom-key) caches: a sweep without `evictNamed` can never free it. */
  namedRefs: number;
  bytes: number;
}

type Change =
  | { op: "put"; cachePath: string; entry: IndexEntry }
  | { op: "use"; cachePath: string; u: number; entry?: IndexEntry | undefined }
  | { op: "del"; cachePath: string; u: number };

export class RetentionIndex {
  /** Which cache shares the longest message prefix with a history (entries with prefix info). */
  readonly prefix = new PrefixIndex();
  #entries = new Map<string, IndexEntry>();
  #autoBytes = 0;
  #namedBytes = 0;
  #autoCount = 0;
  #namedCount = 0;
  #snapshotBytes = 0;
  #logicalBytes = 0;
  /** `<context>/<id>` → the caches naming it. */
  #chunks = new Map<string, ChunkCount>();
  #chunkBytes = 0;
  /** Bytes of the chunks no named cache names (a sweep of auto caches alone can free them). */
  #unnamedChunkBytes = 0;
  /** Changes noted while a rebuild runs, replayed onto its result. */
  #replay: Change[] | null = null;

  get size(): number {
    return this.#entries.size;
  }

  get(cachePath: string): IndexEntry | undefined {
    return this.#entries.get(cachePath);
  }

  entries(): IterableIterator<[string, IndexEntry]> {
    return this.#entries.entries();
  }

  usage(): IndexUsage {
    return {
      bytes: this.#autoBytes + this.#namedBytes + this.#chunkBytes,
      count: this.#autoCount + this.#namedCount,
      autoBytes: this.#autoBytes,
      namedBytes: this.#namedBytes,
      logicalBytes: this.#logicalBytes,
      chunkCount: this.#chunks.size,
      chunkBytes: this.#chunkBytes,
    };
  }

  /** How many caches name the chunk `<context>/<id>` (0 when none). */
  chunkRefs(context: string, id: string): number {
    return this.#chunks.get(`${context}/${id}`)?.refs ?? 0;
  }

  /** About how many bytes a snapshot of the index takes in the shared log (see `snapshotRecordBytes`). */
  get snapshotBytes(): number {
    return this.#snapshotBytes;
  }

  /**
   * Physical bytes a sweep could free by evicting every cache it may: their files, and the
   * chunks only they name (without `evictNamed`, a chunk a named cache names stays).
   */
  evictableBytes(evictNamed: boolean): number {
    return evictNamed ? this.#autoBytes + this.#namedBytes + this.#chunkBytes : this.#autoBytes + this.#unnamedChunkBytes;
  }

  /** A cache was written (commit or prime) at `entry.lastUsedMs` with `entry.bytes`. */
  put(cachePath: string, entry: IndexEntry): void {
    this.#replay?.push({ op: "put", cachePath, entry });
    this.#put(this.#entries, cachePath, entry);
  }

  /**
   * A cache was used (loaded by a turn) at `u`. `ifUnknown` describes it when the index
   * has no entry for it (its `put` came from a record not seen, or was lost).
   */
  use(cachePath: string, u: number, ifUnknown?: IndexEntry): void {
    this.#replay?.push({ op: "use", cachePath, u, entry: ifUnknown });
    const entry = this.#entries.get(cachePath);
    // Replaced, never mutated: a sweep's plan keeps the entries it was made from.
    if (entry) {
      if (u > entry.lastUsedMs) this.#entries.set(cachePath, { ...entry, lastUsedMs: u });
    } else if (ifUnknown) {
      this.#put(this.#entries, cachePath, { ...ifUnknown, lastUsedMs: u });
    }
  }

  /** A cache was removed at `u` (omit `u` for "gone now, whatever the index knew"). */
  remove(cachePath: string, u = Number.MAX_SAFE_INTEGER): void {
    this.#replay?.push({ op: "del", cachePath, u });
    this.#remove(this.#entries, cachePath, u);
  }

  /**
   * What the disk says of a cache a record told of (`entry`, or null: no such cache), taking
   * the place of whatever the index holds — unless the entry changed since `seen` was read
   * (a commit, use or delete of this process meanwhile is newer than the look). Never during
   * a rebuild (the walk reads the disk itself).
   */
  confirm(cachePath: string, seen: IndexEntry | undefined, entry: IndexEntry | null): void {
    if (this.#replay !== null || this.#entries.get(cachePath) !== seen) return;
    if (seen) {
      this.#entries.delete(cachePath);
      this.#account(seen, -1);
      this.prefix.remove(cachePath);
    }
    if (entry) this.#put(this.#entries, cachePath, entry);
  }

  /** Start a rebuild: from now on, changes are also kept to be replayed onto its result. */
  beginRebuild(): void {
    this.#replay = [];
  }

  /** Replace the map by a rebuilt one, then replay the changes noted since `beginRebuild`. */
  finishRebuild(rebuilt: Map<string, IndexEntry>): void {
    const replay = this.#replay ?? [];
    this.#replay = null;
    this.#entries = new Map();
    this.prefix.clear();
    this.#autoBytes = this.#namedBytes = this.#autoCount = this.#namedCount = this.#snapshotBytes = this.#logicalBytes = 0;
    this.#chunks = new Map();
    this.#chunkBytes = this.#unnamedChunkBytes = 0;
    for (const [cachePath, entry] of rebuilt) this.#put(this.#entries, cachePath, entry);
    for (const change of replay) {
      if (change.op === "put") this.put(change.cachePath, change.entry);
      else if (change.op === "use") this.use(change.cachePath, change.u, change.entry);
      else this.remove(change.cachePath, change.u);
    }
  }

  abortRebuild(): void {
    this.#replay = null;
  }

  #put(map: Map<string, IndexEntry>, cachePath: string, entry: IndexEntry): void {
    const existing = map.get(cachePath);
    if (existing) {
      if (existing.lastUsedMs > entry.lastUsedMs) return; // a later change is already known
      this.#account(existing, -1);
    }
    const copy = { ...entry };
    map.set(cachePath, copy);
    this.#account(copy, 1);
    if (copy.prefix) {
      this.prefix.put(cachePath, {
        scopeId: copy.scopeId ?? null,
        cacheKey: copy.cacheKey,
        modelId: copy.modelId,
        configHash: copy.configHash,
        kind: copy.kind,
        bytes: copy.bytes,
        ...copy.prefix,
      });
    } else this.prefix.remove(cachePath);
  }

  #countChunks(entry: IndexEntry, sign: 1 | -1): void {
    const { context, ids, chunkBytes } = entry.chunks!;
    const named = entry.kind === "named" ? 1 : 0;
    for (const id of ids) {
      const key = `${context}/${id}`;
      let count = this.#chunks.get(key);
      if (!count) {
        if (sign < 0) continue; // (never counted: nothing to take back)
        count = { refs: 0, namedRefs: 0, bytes: chunkBytes };
        this.#chunks.set(key, count);
        this.#chunkBytes += count.bytes;
        this.#unnamedChunkBytes += count.bytes;
      }
      const wasUnnamed = count.namedRefs === 0;
      count.refs += sign;
      count.namedRefs += sign * named;
      const isUnnamed = count.namedRefs === 0;
      if (wasUnnamed && !isUnnamed) this.#unnamedChunkBytes -= count.bytes;
      if (!wasUnnamed && isUnnamed) this.#unnamedChunkBytes += count.bytes;
      if (count.refs <= 0) {
        this.#chunks.delete(key);
        this.#chunkBytes -= count.bytes;
        if (isUnnamed) this.#unnamedChunkBytes -= count.bytes;
      }
    }
  }

  #remove(map: Map<string, IndexEntry>, cachePath: string, u: number): void {
    const existing = map.get(cachePath);
    // A cache written or used after this removal is a new one: keep it.
    if (!existing || existing.lastUsedMs > u) return;
    map.delete(cachePath);
    this.#account(existing, -1);
    this.prefix.remove(cachePath);
  }

  #account(entry: IndexEntry, sign: 1 | -1): void {
    this.#snapshotBytes += sign * snapshotRecordBytes(entry);
    this.#logicalBytes += sign * logicalBytesOf(entry);
    if (entry.chunks) this.#countChunks(entry, sign);
    if (entry.kind === "auto") {
      this.#autoBytes += sign * entry.bytes;
      this.#autoCount += sign;
    } else {
      this.#namedBytes += sign * entry.bytes;
      this.#namedCount += sign;
    }
  }
}
