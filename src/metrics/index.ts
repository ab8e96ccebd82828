/**
 * kvkeep's Prometheus metrics (`import { createKvKeepMetrics } from "kvkeep/metrics"`), for
 * `kvkeep serve` and for any completion handler: register them on your prom-client
 * `Registry`, feed them each turn's stats, and scrape. prom-client is an optional peer
 * dependency; only this entry point imports it.
 *
 * This module knows no engine and no server: it takes plain numbers (the node-llama-cpp
 * adapter's `CompletionStats` fit `TurnStats` as they are).
 */
import { Counter, Gauge, Histogram, Registry } from "prom-client";
import type { CacheRefusalReason, EvictedCache, StoreUsage, SweepResult } from "../types.js";

/**
 * Where a turn's prompt came from. Hits: `own` (this conversation's cache), `prefix` (a
 * cache of another history sharing a prefix). Misses: `none` (nothing cached), `foreign`
 * (a cache from another model or context layout, refused), `corrupt` (a cache that failed
 * verification and was removed). Adapters report the last two through `TurnStats.refused`.
 */
export type CacheSource = "own" | "prefix" | "none" | "foreign" | "corrupt";
export const HIT_SOURCES = ["own", "prefix"] as const;
export const MISS_REASONS = ["none", "foreign", "corrupt"] as const;

/** What one turn reports (the node-llama-cpp adapter's `CompletionStats` has these fields). */
export interface TurnStats {
  /** A cached state supplied part of the prompt. */
  hit: boolean;
  /** Where the reused tokens came from; when absent, `hit` decides between `own` and `none`. */
  source?: CacheSource | undefined;
  /**
   * The turn's own cache, when kvkeep refused it (`TurnHandle.refused`; the adapter's
   * `stats.refused`): a turn that then reused nothing is a miss with this reason instead of
   * `none`. A turn that still reused another cache (a prefix) is counted as that hit.
   */
  refused?: { reason: CacheRefusalReason } | null | undefined;
  reusedTokens: number;
  evaluatedTokens: number;
  completionTokens?: number | undefined;
  ttftMs: number;
  /** 0 when no state was loaded (it was already in the engine, or there was none). */
  loadMs: number;
  /** Saving and committing the new state; 0 when nothing was saved. */
  saveMs: number;
  /** The commit's part of `saveMs`. */
  commitMs?: number | undefined;
  /** Why the turn's state was not committed (it rolled back), e.g. `no-space`; null or absent when it was. */
  commitFailure?: string | null | undefined;
}

export interface KvKeepMetricsOptions {
  /** Where the metrics are registered. Default: a new `Registry` (see `metrics.registry`). */
  registry?: Registry | undefined;
  /**
   * A store whose bytes `kvkeep_store_bytes` reports at each scrape (anything with `usage()`).
   * A kvkeep store (one with `onEviction`) is also subscribed to: every eviction its sweeps
   * make — background or manual — counts in `kvkeep_evictions_total`, and `observeSweep`
   * then counts nothing (so a sweep is never counted twice).
   */
  store?: { usage(): Promise<StoreUsage>; onEviction?(listener: (evicted: EvictedCache) => void): () => void } | undefined;
  /** Histogram buckets in seconds for the latency histograms. */
  latencyBuckets?: readonly number[] | undefined;
}

export interface KvKeepMetrics {
  readonly registry: Registry;
  /** Turns whose prompt came partly from a cache, by `source` (`own`, `prefix`). */
  readonly cacheHits: Counter<"source">;
  /** Turns with nothing reused, by `reason` (`none`, `foreign`, `corrupt`). */
  readonly cacheMisses: Counter<"reason">;
  readonly reusedTokens: Counter;
  readonly evaluatedTokens: Counter;
  readonly completionTokens: Counter;
  readonly timeToFirstToken: Histogram;
  readonly loadSeconds: Histogram;
  readonly saveSeconds: Histogram;
  readonly commitSeconds: Histogram;
  /** Caches evicted by retention, by `reason` (`idle`, `budget`). */
  readonly evictions: Counter<"reason">;
  /**
   * Turns that ended without committing, by `reason`: `aborted`, `error` (the turn failed),
   * or the commit's failure (`save-missing`, `no-space`, `deleted-during-turn`, …).
   */
  readonly rollbacks: Counter<"reason">;
  /** Requests waiting for a free engine sequence. */
  readonly queueDepth: Gauge;
  /**
   * Record one finished turn. `cache: false` (a turn run without kvkeep) counts no hit or
   * miss; a `commitFailure` counts as a rollback with that reason.
   */
  observeTurn(stats: TurnStats, options?: { cache?: boolean }): void;
  /** Record a turn that rolled back instead of committing. */
  observeRollback(reason: string): void;
  /**
   * Record what a retention sweep (`store.sweep()`) evicted — for metrics not subscribed to
   * the sweeping store's eviction events; a no-op when `options.store` has `onEviction`.
   */
  observeSweep(result: Pick<SweepResult, "evicted"> & Partial<SweepResult>): void;
}

/** `none`, or the reason the turn's own cache was refused (only the known reasons become labels). */
function missReasonOf(refused: TurnStats["refused"]): CacheSource {
  const reason = refused?.reason;
  return reason !== undefined && (MISS_REASONS as readonly string[]).includes(reason) ? reason : "none";
}

/** 1 ms to 1 min: cache loads and commits of small models take milliseconds, cold prefills of long histories seconds. */
export const DEFAULT_LATENCY_BUCKETS: readonly number[] = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60];

/** Create kvkeep's metrics on `options.registry` (or a new one). Call once per registry: names are fixed. */
export function createKvKeepMetrics(options: KvKeepMetricsOptions = {}): KvKeepMetrics {
  const registry = options.registry ?? new Registry();
  const registers = [registry];
  const buckets = [...(options.latencyBuckets ?? DEFAULT_LATENCY_BUCKETS)];
  const counter = <L extends string>(name: string, help: string, labelNames: readonly L[] = []): Counter<L> =>
    new Counter({ name, help, labelNames, registers });
  const histogram = (name: string, help: string): Histogram => new Histogram({ name, help, buckets, registers });

  const cacheHits = counter("kvkeep_cache_hits_total", "Turns whose prompt came partly from a kvkeep cache, by source.", ["source"]);
  const cacheMisses = counter("kvkeep_cache_misses_total", "Turns that reused nothing from a kvkeep cache, by reason.", ["reason"]);
  const evictions = counter("kvkeep_evictions_total", "Caches evicted by retention sweeps, by reason.", ["reason"]);
  const rollbacks = counter("kvkeep_turns_rolled_back_total", "Turns that ended without committing a new state, by reason.", ["reason"]);
  // Known label values start at 0, so a dashboard's rate() has a series before the first event.
  for (const source of HIT_SOURCES) cacheHits.inc({ source }, 0);
  for (const reason of MISS_REASONS) cacheMisses.inc({ reason }, 0);
  for (const reason of ["idle", "budget"]) evictions.inc({ reason }, 0);
  for (const reason of ["aborted", "error"]) rollbacks.inc({ reason }, 0);

  const store = options.store;
  // A kvkeep store reports each eviction of its own sweeps (background ones included).
  const subscribed = typeof store?.onEviction === "function";
  if (store) {
    new Gauge({
      name: "kvkeep_store_bytes",
      help: "Bytes of the caches under the store's root, by kind (auto: keyed by history; named: kv_cache names; chunks: token chunks they share, each once).",
      labelNames: ["kind"],
      registers,
      async collect() {
        const usage = await store.usage();
        this.set({ kind: "auto" }, usage.autoBytes);
        this.set({ kind: "named" }, usage.namedBytes);
        // (a store of an older kvkeep has no chunks)
        this.set({ kind: "chunks" }, usage.chunkBytes ?? 0);
      },
    });
  }

  const metrics: KvKeepMetrics = {
    registry,
    cacheHits,
    cacheMisses,
    reusedTokens: counter("kvkeep_prompt_tokens_reused_total", "Prompt tokens taken from a cache instead of evaluated."),
    evaluatedTokens: counter("kvkeep_prompt_tokens_evaluated_total", "Prompt tokens the engine evaluated."),
    completionTokens: counter("kvkeep_completion_tokens_total", "Tokens generated."),
    timeToFirstToken: histogram("kvkeep_time_to_first_token_seconds", "From the start of a turn (an engine sequence assigned) to its first generated token."),
    loadSeconds: histogram("kvkeep_cache_load_seconds", "Loading a cached state into the engine (turns that loaded one)."),
    saveSeconds: histogram("kvkeep_cache_save_seconds", "Saving a turn's new state to its temp file (before the commit)."),
    commitSeconds: histogram("kvkeep_cache_commit_seconds", "Committing a saved state: verify, fsync, rename, manifest."),
    evictions,
    rollbacks,
    queueDepth: new Gauge({ name: "kvkeep_queue_depth", help: "Requests waiting for a free engine sequence.", registers }),
    observeTurn(stats, turnOptions = {}) {
      if (turnOptions.cache !== false) {
        const source = stats.source ?? (stats.hit ? "own" : "none");
        if ((HIT_SOURCES as readonly string[]).includes(source)) cacheHits.inc({ source });
        else cacheMisses.inc({ reason: source === "none" ? missReasonOf(stats.refused) : source });
      }
      metrics.reusedTokens.inc(stats.reusedTokens);
      metrics.evaluatedTokens.inc(stats.evaluatedTokens);
      if (stats.completionTokens !== undefined) metrics.completionTokens.inc(stats.completionTokens);
      if (Number.isFinite(stats.ttftMs)) metrics.timeToFirstToken.observe(stats.ttftMs / 1000);
      if (stats.loadMs > 0) metrics.loadSeconds.observe(stats.loadMs / 1000);
      if (stats.commitFailure) rollbacks.inc({ reason: stats.commitFailure });
      if (stats.saveMs > 0) {
        const commitMs = stats.commitMs ?? 0;
        metrics.saveSeconds.observe((stats.saveMs - commitMs) / 1000);
        if (stats.commitMs !== undefined) metrics.commitSeconds.observe(commitMs / 1000);
      }
    },
    observeRollback(reason) {
      rollbacks.inc({ reason });
    },
    observeSweep(result) {
      if (subscribed) return; // counted as they happened, from the store's eviction events
      for (const evicted of result.evicted) evictions.inc({ reason: evicted.reason });
    },
  };
  // Last: a registry that refused a name above (created twice) leaves no subscription behind.
  if (subscribed) store!.onEviction!((evicted) => evictions.inc({ reason: evicted.reason }));
  return metrics;
}
