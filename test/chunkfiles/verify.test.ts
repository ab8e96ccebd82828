/**
 * `kvkeep verify` on chunked caches (docs/chunks-format.md), through the built CLI on real files:
 * every chunk a manifest names is checked (there, size, header, checksum, identity recomputed
 * from parent + tokens + context); a missing, torn, flipped or mislabelled chunk fails the
 * caches naming it; `--fix` removes those caches and the corrupt chunk file, and leaves the
 * sound ones.
 */
import { existsSync, promises as fs, writeFileSync } from "node:fs";
import { beforeAll, describe, expect, it } from "vitest";
import { openKvCacheStore } from "../../src/index.js";
import type { Logger } from "../../src/logger.js";
import { json, kvkeep } from "../cli/helpers.js";
import { tempDir } from "../helpers/temp-root.js";
import { conversation } from "./conversation.js";
import { chunkPath, plantChunkedCache } from "./plant.js";

const quiet: Logger = { debug() {}, info() {}, warn() {}, error() {} };

interface Report {
  results: Array<{ cacheKey: string; status: string; reason?: string }>;
  removedFiles: number;
}

async function verify(root: string, ...args: string[]): Promise<{ code: number; report: Report }> {
  const run = await kvkeep(["verify", "--json", "--root", root, ...args]);
  return { code: run.code, report: json<Report>(run) };
}

const statusOf = (report: Report): Record<string, string> => Object.fromEntries(report.results.map((r) => [r.cacheKey, r.status]));

describe("kvkeep verify on chunked caches", () => {
  // Three caches: a and b share their first 6 chunks; c shares nothing with them.
  const a = conversation(16 * 10 + 5);
  const b = conversation(16 * 10 + 7, { salt: 3, saltFrom: 16 * 6 });
  const c = conversation(16 * 5 + 2, { salt: 9 });
  let root: string;

  beforeAll(() => {
    expect(b.ids.slice(0, 6)).toEqual(a.ids.slice(0, 6));
  });

  async function plantAll(): Promise<void> {
    root = tempDir();
    await openKvCacheStore({ root, logger: quiet }).close();
    await plantChunkedCache(root, { cacheKey: "a" }, a);
    await plantChunkedCache(root, { cacheKey: "b" }, b);
    await plantChunkedCache(root, { cacheKey: "c" }, c);
  }

  it("passes sound chunked caches", async () => {
    await plantAll();
    const { code, report } = await verify(root);
    expect(code).toBe(0);
    expect(statusOf(report)).toEqual({ a: "ok", b: "ok", c: "ok" });
  });

  it("fails every cache naming a flipped shared chunk, and one whose own chunk is missing; --fix removes them and the corrupt chunk, and keeps the sound cache", async () => {
    await plantAll();
    const shared = chunkPath(root, a.context.digest, a.ids[2]!);
    const bytes = await fs.readFile(shared);
    bytes[bytes.byteLength - 5]! ^= 0x40;
    writeFileSync(shared, bytes);
    await fs.unlink(chunkPath(root, b.context.digest, b.ids[8]!));

    const checked = await verify(root);
    expect(checked.code).toBe(1);
    expect(statusOf(checked.report)).toEqual({ a: "bad", b: "bad", c: "ok" });
    expect(checked.report.results.find((r) => r.cacheKey === "a")!.reason).toMatch(/^chunk 3 of 10 .*checksum/);

    const fixed = await verify(root, "--fix");
    expect(fixed.code).toBe(0);
    expect(statusOf(fixed.report)).toEqual({ a: "removed", b: "removed", c: "ok" });
    expect(existsSync(shared)).toBe(false);
    const after = await verify(root);
    expect(statusOf(after.report)).toEqual({ c: "ok" });
  });

  it("fails a cache whose chunk file holds another conversation's whole, well-formed chunk (its identity does not match its name)", async () => {
    await plantAll();
    await fs.copyFile(chunkPath(root, c.context.digest, c.ids[1]!), chunkPath(root, c.context.digest, c.ids[3]!));
    const { code, report } = await verify(root);
    expect(code).toBe(1);
    expect(statusOf(report)).toEqual({ a: "ok", b: "ok", c: "bad" });
    expect(report.results.find((r) => r.cacheKey === "c")!.reason).toMatch(/chunk 4 of 5 .*not the ones its name says/);
  });
});
