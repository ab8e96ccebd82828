/**
 * The shared delete log (src/durable/delete-log.ts) on real files: a mark sees exactly the
 * records appended after it that cover a cache; a record still being written is not one;
 * rotation keeps marks on the rotated file checkable, and a mark older than two rotations
 * counts as deleted rather than being silently missed.
 */
import { promises as fs } from "node:fs";
import { describe, expect, it } from "vitest";
import { DeleteLog, deleteScope, scopeCovers } from "../../src/durable/delete-log.js";
import { loadNativeFs } from "../../src/native/index.js";
import { tempDir } from "../helpers/temp-root.js";

describe("the delete log", () => {
  it("a mark sees the records after it that cover the cache, and no others", async () => {
    const log = new DeleteLog(tempDir(), loadNativeFs());
    await log.append("other", "start");
    const mark = await log.mark();
    expect(await log.coveredSince(mark, "chat", "m")).toBe(false);
    await log.append("other", "start");
    await log.append("chat/other-model", "end");
    expect(await log.coveredSince(mark, "chat", "m")).toBe(false);
    await log.append("chat/m", "start");
    expect(await log.coveredSince(mark, "chat", "m")).toBe(true);
    const later = await log.mark();
    expect(await log.coveredSince(later, "chat", "m")).toBe(false);
    await log.append("", "end"); // everything
    expect(await log.coveredSince(later, "any", "model")).toBe(true);
  });

  it("a partial last line (a record still being written) is not a record yet", async () => {
    const log = new DeleteLog(tempDir(), loadNativeFs());
    await log.append("x", "start");
    const mark = await log.mark();
    await fs.appendFile(log.path, '{"s":"chat","p":"sta');
    expect(await log.coveredSince(mark, "chat", "m")).toBe(false);
    await fs.appendFile(log.path, 'rt"}\n');
    expect(await log.coveredSince(mark, "chat", "m")).toBe(true);
  });

  it("a mark taken before the log existed sees every record", async () => {
    const log = new DeleteLog(tempDir(), loadNativeFs());
    const mark = await log.mark();
    expect(mark).toEqual({ ino: null, size: 0 });
    expect(await log.coveredSince(mark, "chat", "m")).toBe(false);
    await log.append("chat", "start");
    expect(await log.coveredSince(mark, "chat", "m")).toBe(true);
  });

  it("after a rotation a mark reads the rest of the rotated log and the new one; after two it assumes the worst", async () => {
    const log = new DeleteLog(tempDir(), loadNativeFs(), { rotateBytes: 200 });
    await log.append("a", "start");
    const mark = await log.mark();
    for (let i = 0; i < 10; i++) await log.append(`other-${i}`, "end"); // rotates once past 200 bytes
    expect((await log.mark()).ino).not.toBe(mark.ino);
    expect(await log.coveredSince(mark, "chat", "m")).toBe(false);
    await log.append("chat", "start");
    expect(await log.coveredSince(mark, "chat", "m")).toBe(true);
    const beforeTwo = await log.mark();
    for (let i = 0; i < 20; i++) await log.append(`other-${i}`, "end"); // two more rotations
    expect(await log.coveredSince(beforeTwo, "chat", "m")).toBe(true);
  });

  it("a delete on a root that does not exist records nothing and creates nothing", async () => {
    const root = `${tempDir()}/missing`;
    const log = new DeleteLog(root, loadNativeFs());
    await log.append("chat", "start");
    await expect(fs.access(root)).rejects.toMatchObject({ code: "ENOENT" });
  });

  it("scopes: everything, a key, a key's model", () => {
    expect(deleteScope({})).toBe("");
    expect(deleteScope({ cacheKey: "k" })).toBe("k");
    expect(deleteScope({ cacheKey: "k", modelId: "m" })).toBe("k/m");
    expect(scopeCovers("", "k", "m")).toBe(true);
    expect(scopeCovers("k", "k", "m")).toBe(true);
    expect(scopeCovers("k/m", "k", "m")).toBe(true);
    expect(scopeCovers("k/n", "k", "m")).toBe(false);
    expect(scopeCovers("kk", "k", "m")).toBe(false);
  });
});
