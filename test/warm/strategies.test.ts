import { mkdir, mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import {
  createCacheWarmer,
  createPrefetchWarm,
  PREFETCH_CHUNK_BYTES,
  readFileThrough,
  type WarmContext,
  type WarmResult,
} from "../../src/warm/index.js";
import { fakeTimers, memStorage } from "./helpers.js";

let dir: string;
let cacheFile: string;
const SIZE = 2 * PREFETCH_CHUNK_BYTES + 12_345;

beforeEach(async () => {
  dir = await mkdtemp(join(tmpdir(), "kvkeep-prefetch-"));
  cacheFile = join(dir, "state.bin");
  await writeFile(cacheFile, Buffer.alloc(SIZE, 7));
});

afterEach(async () => {
  await rm(dir, { recursive: true, force: true });
});

function call(ctx: WarmContext, options = {}, signal = new AbortController().signal): Promise<WarmResult> {
  return createPrefetchWarm(options)("conv-1", ctx, { signal });
}

describe("readFileThrough", () => {
  it("reads the whole file in chunks and reports the bytes", async () => {
    expect(await readFileThrough(cacheFile)).toBe(SIZE);
  });

  it("stops when its signal aborts", async () => {
    const controller = new AbortController();
    controller.abort(new Error("turn started"));
    await expect(readFileThrough(cacheFile, { signal: controller.signal })).rejects.toThrow("turn started");
  });
});

describe("createPrefetchWarm", () => {
  it("reads the cache file from ctx.cachePath and reports a full cache read", async () => {
    expect(await call({ cachePath: cacheFile })).toEqual({
      inputTokens: 1,
      cacheReadTokens: 1,
      outputTokens: 0,
      cacheWriteTokens: 0,
    });
  });

  it("reports ctx.tokenCount, or what tokenCount(ctx) says, as the tokens read", async () => {
    expect(await call({ cachePath: cacheFile, tokenCount: 512 })).toMatchObject({ inputTokens: 512, cacheReadTokens: 512 });
    expect(await call({ cachePath: cacheFile, tokenCount: -3 })).toMatchObject({ inputTokens: 1, cacheReadTokens: 1 });
    expect(await call({ cachePath: cacheFile, n: 99 }, { tokenCount: (ctx: WarmContext) => ctx["n"] as number })).toMatchObject({
      inputTokens: 99,
      cacheReadTokens: 99,
    });
  });

  it("returns an error result, not a throw, when the file is missing", async () => {
    const missing = join(dir, "gone.bin");
    expect(await call({ cachePath: missing })).toEqual({ error: `cache file not found: ${missing}` });
  });

  it("returns error results when there is nothing sensible to read", async () => {
    expect(await call({})).toMatchObject({ error: expect.stringContaining("no cache path") });
    const empty = join(dir, "empty.bin");
    await writeFile(empty, "");
    expect(await call({ cachePath: empty })).toMatchObject({ error: expect.stringContaining("cache file is empty") });
    const sub = join(dir, "sub");
    await mkdir(sub);
    expect(await call({ cachePath: sub })).toMatchObject({ error: expect.stringContaining("not a file") });
    const controller = new AbortController();
    controller.abort();
    expect(await call({ cachePath: cacheFile }, {}, controller.signal)).toMatchObject({
      error: expect.stringContaining("aborted"),
    });
  });

  it("uses the injected resolveCachePath and prefetchFile", async () => {
    const seen: Array<{ path: string; signal: AbortSignal }> = [];
    const result = await call(
      {},
      {
        resolveCachePath: async (id: string) => (id === "conv-1" ? cacheFile : null),
        prefetchFile: async (path: string, options: { signal: AbortSignal }) => {
          seen.push({ path, signal: options.signal });
        },
      },
    );
    expect(result).toMatchObject({ inputTokens: 1, cacheReadTokens: 1 });
    expect(seen.map((s) => s.path)).toEqual([cacheFile]);
    expect(seen[0]?.signal).toBeInstanceOf(AbortSignal);
  });

  it("turns failures of the injected parts into error results", async () => {
    const enoent = Object.assign(new Error("vanished"), { code: "ENOENT" });
    expect(await call({ cachePath: cacheFile }, { prefetchFile: async () => Promise.reject(enoent) })).toEqual({
      error: `cache file not found: ${cacheFile}`,
    });
    expect(
      await call({ cachePath: cacheFile }, { prefetchFile: async () => Promise.reject(new Error("EIO")) }),
    ).toMatchObject({ error: expect.stringContaining("EIO") });
    expect(
      await call(
        {},
        {
          resolveCachePath: () => {
            throw new Error("no store");
          },
        },
      ),
    ).toMatchObject({ error: expect.stringContaining("no store") });
  });

  it("drives a warmer end to end: lastPct 100 after a prefetch, error results re-arm", async () => {
    const timers = fakeTimers();
    const warmer = createCacheWarmer({ warm: createPrefetchWarm(), storage: memStorage(), timers });
    warmer.onTurnSettled("conv-1", { cachePath: cacheFile });
    await warmer.ready();
    timers.fireAll();
    await warmer.ready();
    expect(warmer.getState("conv-1")).toMatchObject({ lastPct: 100, armed: true });

    await rm(cacheFile);
    timers.fireAll();
    await warmer.ready();
    expect(warmer.getState("conv-1")).toMatchObject({ lastPct: 100, armed: true });
    warmer.dispose();
  });
});
