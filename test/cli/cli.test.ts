/** The kvkeep CLI on a real cache root. */
import { promises as fs } from "node:fs";
import { describe, expect, it } from "vitest";
import { main } from "../../src/cli/main.js";
import { generateConfigHash, openKvCacheStore } from "../../src/index.js";
import { customTurn } from "../helpers/fake-engine.js";
import { tempDir } from "../helpers/temp-root.js";

async function cli(...argv: string[]): Promise<{ code: number; out: string }> {
  const lines: string[] = [];
  const code = await main(argv, (l) => lines.push(l));
  return { code, out: lines.join("\n") };
}

async function rootWithCaches(): Promise<{ root: string; paths: string[] }> {
  const root = tempDir();
  const store = openKvCacheStore({ root });
  const session = store.createSession("m");
  const a = await customTurn(session, "alpha", generateConfigHash("s"), 3);
  const b = await customTurn(session, "beta", generateConfigHash("s"), 5);
  await store.close();
  return { root, paths: [a.cachePath, b.cachePath] };
}

describe("kvkeep CLI", () => {
  it("scan lists every cache with its message count, and usage sums them", async () => {
    const { root } = await rootWithCaches();
    const scan = await cli("--root", root, "--json", "scan");
    expect(scan.code).toBe(0);
    const caches = JSON.parse(scan.out) as Array<{ cacheKey: string; messageCount: number; problem: string | null }>;
    expect(caches.map((c) => [c.cacheKey, c.messageCount, c.problem]).sort()).toEqual([
      ["alpha", 3, null],
      ["beta", 5, null],
    ]);
    const usage = JSON.parse((await cli("--root", root, "--json", "usage")).out);
    expect(usage).toMatchObject({ count: 2, namedBytes: usage.bytes, autoBytes: 0 });
  });

  it("verify finds a damaged cache (exit 1) and --fix removes it, leaving the good one", async () => {
    const { root, paths } = await rootWithCaches();
    const { size } = await fs.stat(paths[0]!);
    await fs.writeFile(paths[0]!, Buffer.alloc(size, 1));
    const check = await cli("--root", root, "verify");
    expect(check.code).toBe(1);
    expect(check.out).toMatch(/bad\s+.*alpha/);
    expect(check.out).toMatch(/ok\s+.*beta/);
    expect((await cli("--root", root, "verify", "--fix")).code).toBe(0);
    await expect(fs.stat(paths[0]!)).rejects.toThrow();
    expect((await cli("--root", root, "verify")).code).toBe(0);
  });

  it("rm removes one key or everything", async () => {
    const { root, paths } = await rootWithCaches();
    expect((await cli("--root", root, "rm", "alpha")).code).toBe(0);
    await expect(fs.stat(paths[0]!)).rejects.toThrow();
    await fs.stat(paths[1]!);
    expect((await cli("--root", root, "rm", "--all")).code).toBe(0);
    expect(JSON.parse((await cli("--root", root, "--json", "scan")).out)).toEqual([]);
  });

  it("gc evicts named caches only when asked through the store, and reports what it kept", async () => {
    const { root } = await rootWithCaches();
    const gc = await cli("--root", root, "--json", "gc", "--max-bytes", "0");
    expect(gc.code).toBe(0);
    expect(JSON.parse(gc.out)).toMatchObject({ evicted: [], keptBytes: 0 }); // named caches are not evictable by default
  });

  it("bad input exits 2 with a message, and backend names the native backend", async () => {
    expect((await cli("frobnicate")).code).toBe(2);
    expect((await cli("gc", "--max-bytes", "lots")).code).toBe(2);
    expect((await cli("rm")).code).toBe(2);
    const backend = JSON.parse((await cli("--json", "backend")).out);
    expect(["prebuilt", "local-build", "js-fallback"]).toContain(backend.kind);
  });
});
