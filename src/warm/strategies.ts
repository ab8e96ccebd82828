/**
 * Local warm strategies: `WarmFn`s that keep a conversation's kvkeep cache hot without
 * calling a provider.
 *
 * - `prefetch` (here): read the conversation's cache file into the OS page cache, so the
 *   next turn's state load is served from memory instead of disk.
 * - `preload` (the node-llama-cpp adapter provides it): load the state into an idle engine
 *   sequence, so the next turn skips the load altogether. Any function of type
 *   {@link WarmFn} is a strategy; that type is the extension point.
 */
import { open, stat } from "node:fs/promises";
import { errnoCode } from "../errors.js";
import type { WarmContext, WarmFn, WarmResult } from "./types.js";

export type { WarmFn } from "./types.js";

/** Bytes read per call by the default prefetch. */
export const PREFETCH_CHUNK_BYTES = 1024 * 1024;

export interface PrefetchFileOptions {
  /** Aborted when the warm goes stale; stop reading when it fires. */
  readonly signal: AbortSignal;
}

export interface PrefetchWarmOptions {
  /**
   * Where the conversation's cache file is; `null` means there is nothing to warm
   * (an error result). Default: `ctx.cachePath` (the context recorded at the last settle).
   */
  readonly resolveCachePath?: (
    conversationId: string,
    ctx: WarmContext,
  ) => string | null | undefined | Promise<string | null | undefined>;
  /**
   * Bring a file into the OS page cache. Default: {@link readFileThrough}, which reads the
   * file once in {@link PREFETCH_CHUNK_BYTES} chunks and discards them (the native addon's
   * prefetch can be passed instead). Should reject with the fs error (e.g. ENOENT) on failure.
   */
  readonly prefetchFile?: (path: string, options: PrefetchFileOptions) => Promise<unknown>;
  /**
   * The token count to report for the cached state. Default: `ctx.tokenCount` when it is a
   * positive number, else 1. Bytes are not tokens, so without a count the report is a
   * placeholder whose only meaning is the ratio: a fully prefetched file is a 100% cache read.
   */
  readonly tokenCount?: (ctx: WarmContext) => number | null | undefined;
}

/** Read `path` through once, discarding the bytes: what's left behind is the page cache. Resolves to the bytes read. */
export async function readFileThrough(path: string, options?: Partial<PrefetchFileOptions>): Promise<number> {
  const signal = options?.signal;
  signal?.throwIfAborted();
  const handle = await open(path, "r");
  try {
    const buffer = Buffer.allocUnsafe(PREFETCH_CHUNK_BYTES);
    let total = 0;
    for (;;) {
      signal?.throwIfAborted();
      const { bytesRead } = await handle.read(buffer, 0, buffer.length, null);
      if (bytesRead === 0) return total;
      total += bytesRead;
    }
  } finally {
    await handle.close();
  }
}

function positiveCount(value: unknown): number | null {
  return typeof value === "number" && Number.isFinite(value) && value > 0 ? Math.round(value) : null;
}

/**
 * A warm that prefetches the conversation's cache file into the page cache.
 * Resolves to `{ inputTokens: n, cacheReadTokens: n, outputTokens: 0, cacheWriteTokens: 0 }`
 * (n from `tokenCount`, see there) once the whole file was read, or to `{ error }` — never
 * throws — when there is no path, the file is missing, not a regular file, empty, the read
 * fails or the warm was aborted.
 */
export function createPrefetchWarm(options: PrefetchWarmOptions = {}): WarmFn {
  const resolveCachePath =
    options.resolveCachePath ??
    ((_conversationId: string, ctx: WarmContext) => (typeof ctx.cachePath === "string" ? ctx.cachePath : null));
  const prefetchFile = options.prefetchFile ?? readFileThrough;
  const tokenCount = options.tokenCount ?? ((ctx: WarmContext) => ctx.tokenCount);

  return async (conversationId, ctx, callOptions): Promise<WarmResult> => {
    const signal = callOptions?.signal ?? new AbortController().signal;
    let path: string | null | undefined;
    try {
      path = await resolveCachePath(conversationId, ctx);
    } catch (error) {
      return { error: `could not resolve the cache path: ${(error as Error)?.message ?? String(error)}` };
    }
    if (typeof path !== "string" || path.length === 0) {
      return { error: `no cache path for conversation ${conversationId} (nothing settled with a cachePath)` };
    }
    if (signal.aborted) return { error: "prefetch aborted before it started" };

    try {
      const info = await stat(path);
      if (!info.isFile()) return { error: `cache path is not a file: ${path}` };
      if (info.size === 0) return { error: `cache file is empty: ${path}` };
      await prefetchFile(path, { signal });
    } catch (error) {
      if (signal.aborted) return { error: "prefetch aborted" };
      const errno = errnoCode(error);
      if (errno === "ENOENT" || errno === "ENOTDIR") return { error: `cache file not found: ${path}` };
      return { error: `prefetch of ${path} failed: ${(error as Error)?.message ?? String(error)}` };
    }
    if (signal.aborted) return { error: "prefetch aborted" };

    let tokens: number | null;
    try {
      tokens = positiveCount(tokenCount(ctx));
    } catch {
      tokens = null;
    }
    const n = tokens ?? 1;
    return { inputTokens: n, cacheReadTokens: n, outputTokens: 0, cacheWriteTokens: 0 };
  };
}
