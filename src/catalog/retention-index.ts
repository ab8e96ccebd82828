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
 */
import { PrefixIndex } from "../prefix/prefix-index.js";
import { snapshotRecordBytes } from "./log-record.js";
import type { IndexEntry } from "./entry.js";

export interface IndexUsage {
  bytes: number;
  count: number;
  autoBytes: number;
  namedBytes: number;
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
      bytes: this.#autoBytes + this.#namedBytes,
      count: this.#autoCount + this.#namedCount,
      autoBytes: this.#autoBytes,
      namedBytes: this.#namedBytes,
    };
  }

  /** About how many bytes a snapshot of the index takes in the shared log (see `snapshotRecordBytes`). */
  get snapshotBytes(): number {
    return this.#snapshotBytes;
  }

  /** Bytes of the caches a sweep may evict. */
  evictableBytes(evictNamed: boolean): number {
    return evictNamed ? this.#autoBytes + this.#namedBytes : this.#autoBytes;
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
    this.#autoBytes = this.#namedBytes = this.#autoCount = this.#namedCount = this.#snapshotBytes = 0;
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
    if (entry.kind === "auto") {
      this.#autoBytes += sign * entry.bytes;
      this.#autoCount += sign;
    } else {
      this.#namedBytes += sign * entry.bytes;
      this.#namedCount += sign;
    }
  }
}
