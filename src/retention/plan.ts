/**
 * Retention planning (pure: no I/O, no clock — `now` is passed in).
 *
 * Given the index (cache path → what is known about it), decide which caches a sweep
 * should try to evict and in which order: every evictable cache idle for longer than
 * `maxIdleMs` first, then the least recently used ones until the evictable caches fit in
 * `maxBytes`. The executor (retention.ts) takes each candidate's lock and re-checks it on
 * disk (`stillVictim`) before removing anything: the plan is a proposal, not a verdict.
 */
import { type IndexEntry, USE_TIME_SLACK_MS } from "../catalog/entry.js";
import { KvKeepError } from "../errors.js";

export interface RetentionLimits {
  maxBytes: number;
  maxIdleMs: number;
  evictNamed: boolean;
}

export type EvictionReason = "idle" | "budget";

export interface Candidate {
  cachePath: string;
  entry: IndexEntry;
  reason: EvictionReason;
}

export interface SweepPlan {
  /** Caches whose last use is older than `idleCutoffMs`, oldest first. */
  readonly idle: Candidate[];
  /** Bytes of every evictable cache in the index when the plan was made. */
  readonly evictableBytes: number;
  /** `now - maxIdleMs`: a cache last used before this is idle. */
  readonly idleCutoffMs: number;
  /**
   * The other evictable caches, least recently used first, produced lazily (a heap: the
   * sweep pays O(n) plus O(log n) per cache it actually looks at, not a full sort).
   */
  budgetOrder(): Iterator<Candidate>;
}

export const DEFAULT_MAX_BYTES = 4 * 1024 ** 3;
export const DEFAULT_MAX_IDLE_MS = 24 * 60 * 60 * 1000;
export const DEFAULT_SWEEP_INTERVAL_MS = 5 * 60 * 1000;

/** A retention limit must be a finite, non-negative number (use a huge one to disable a limit). */
export function checkLimit(value: unknown, argument: string): number {
  if (typeof value !== "number" || !Number.isFinite(value) || value < 0) {
    throw new KvKeepError(
      "INVALID_ARGUMENT",
      `${argument} must be a finite, non-negative number (got ${typeof value === "number" ? String(value) : typeof value}); pass a large value such as Number.MAX_SAFE_INTEGER to disable the limit.`,
      { argument },
    );
  }
  return value;
}

export function isEvictable(entry: IndexEntry, evictNamed: boolean): boolean {
  return entry.kind === "auto" || evictNamed;
}

/** Plan one sweep over `entries` at time `now`. O(n); sorting is deferred to `budgetOrder`. */
export function planSweep(entries: Iterable<[string, IndexEntry]>, limits: RetentionLimits, now: number): SweepPlan {
  const idleCutoffMs = now - limits.maxIdleMs;
  const idle: Candidate[] = [];
  const rest: Candidate[] = [];
  let evictableBytes = 0;
  for (const [cachePath, entry] of entries) {
    if (!isEvictable(entry, limits.evictNamed)) continue;
    evictableBytes += entry.bytes;
    if (entry.lastUsedMs < idleCutoffMs) idle.push({ cachePath, entry, reason: "idle" });
    else rest.push({ cachePath, entry, reason: "budget" });
  }
  idle.sort(byLastUse);
  return {
    idle,
    evictableBytes,
    idleCutoffMs,
    budgetOrder: () => heapOrder(rest),
  };
}

function byLastUse(a: Candidate, b: Candidate): number {
  return a.entry.lastUsedMs - b.entry.lastUsedMs || (a.cachePath < b.cachePath ? -1 : a.cachePath > b.cachePath ? 1 : 0);
}

/** Yield `items` in `byLastUse` order with a binary min-heap built in place (O(n) build). */
function* heapOrder(items: Candidate[]): Generator<Candidate> {
  const heap = items;
  const less = (i: number, j: number): boolean => byLastUse(heap[i]!, heap[j]!) < 0;
  const swap = (i: number, j: number): void => {
    const t = heap[i]!;
    heap[i] = heap[j]!;
    heap[j] = t;
  };
  const down = (start: number, size: number): void => {
    let i = start;
    for (;;) {
      const l = 2 * i + 1;
      const r = l + 1;
      let m = i;
      if (l < size && less(l, m)) m = l;
      if (r < size && less(r, m)) m = r;
      if (m === i) return;
      swap(i, m);
      i = m;
    }
  };
  let size = heap.length;
  for (let i = (size >> 1) - 1; i >= 0; i--) down(i, size);
  while (size > 0) {
    const top = heap[0]!;
    size--;
    if (size > 0) {
      heap[0] = heap[size]!;
      down(0, size);
    }
    yield top;
  }
}

/**
 * Under the cache's lock, is a candidate still a victim, given the last use read from disk
 * (`diskUseMs`, null when the manifest is gone — an untrusted file, removable anyway)?
 * - idle: only if the disk, too, says it was last used before the cutoff;
 * - budget: only if it was not used after what the plan knew (`indexedUseMs`): a use the
 *   index missed (another process's record not read yet, or lost) moves it to the back.
 */
export function stillVictim(candidate: Candidate, diskUseMs: number | null, idleCutoffMs: number, now = Number.POSITIVE_INFINITY): boolean {
  if (diskUseMs === null) return true;
  // A use in the future says nothing newer than the plan knew (see clampUse).
  if (diskUseMs > now) diskUseMs = candidate.entry.lastUsedMs;
  if (candidate.reason === "idle") return diskUseMs < idleCutoffMs;
  return diskUseMs <= candidate.entry.lastUsedMs + USE_TIME_SLACK_MS;
}

/**
 * The chunk reference counts as a sweep's plan goes: the counts `refsOf` gives (the index's),
 * minus the caches the plan has taken so far. Evicting a cache frees its file and each chunk
 * whose count reaches 0 — so evicting one of many conversations sharing a prefix frees only
 * what it alone names.
 */
export class PlanChunkRefs {
  readonly #taken = new Map<string, number>();

  constructor(private readonly refsOf: (context: string, id: string) => number) {}

  /** Count the entry's chunks down; the physical bytes its eviction frees. */
  take(entry: IndexEntry): number {
    let freed = entry.bytes;
    if (!entry.chunks) return freed;
    const { context, ids, chunkBytes } = entry.chunks;
    for (const id of ids) {
      const key = `${context}/${id}`;
      const taken = (this.#taken.get(key) ?? 0) + 1;
      this.#taken.set(key, taken);
      if (taken === this.refsOf(context, id)) freed += chunkBytes;
    }
    return freed;
  }

  /** The entry was kept after all: its chunks count again. */
  giveBack(entry: IndexEntry): void {
    if (!entry.chunks) return;
    for (const id of entry.chunks.ids) {
      const key = `${entry.chunks.context}/${id}`;
      this.#taken.set(key, (this.#taken.get(key) ?? 1) - 1);
    }
  }
}

/** Reference counts of the chunks `entries` name (`<context>/<id>` → caches), and the physical bytes the evictable ones could free. */
export function chunkCountsOf(entries: Iterable<[string, IndexEntry]>, evictNamed: boolean): { refs: Map<string, number>; evictableBytes: number } {
  const refs = new Map<string, number>();
  const pinned = new Set<string>();
  const bytes = new Map<string, number>();
  let evictableBytes = 0;
  for (const [, entry] of entries) {
    const evictable = isEvictable(entry, evictNamed);
    if (evictable) evictableBytes += entry.bytes;
    if (!entry.chunks) continue;
    for (const id of entry.chunks.ids) {
      const key = `${entry.chunks.context}/${id}`;
      refs.set(key, (refs.get(key) ?? 0) + 1);
      bytes.set(key, entry.chunks.chunkBytes);
      if (!evictable) pinned.add(key);
    }
  }
  for (const [key, size] of bytes) if (!pinned.has(key)) evictableBytes += size;
  return { refs, evictableBytes };
}
