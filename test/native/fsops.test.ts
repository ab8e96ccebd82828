import { existsSync, mkdirSync, readFileSync, writeFileSync } from "node:fs";
import path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { isKvKeepError } from "../../src/errors.js";
import type { NativeFs } from "../../src/native/types.js";
import { backends, nativeSkipped, nativeSuiteName, requireNative, seededBytes, suiteName, TempDirs } from "./helpers.js";

const temp = new TempDirs();
afterAll(() => temp.cleanup());

async function rejection(promise: Promise<unknown>): Promise<unknown> {
  return promise.then(
    () => {
      throw new Error("expected a rejection");
    },
    (error: unknown) => error,
  );
}

describe.each(backends)("file operations", (backend) => {
  describe.skipIf(backend.skip)(suiteName(backend, "file operations"), () => {
    let fs: NativeFs;
    let dir: string;
    beforeAll(() => {
      fs = backend.get();
      dir = temp.make();
    });
    let n = 0;
    const fresh = (name: string): string => {
      const sub = path.join(dir, `case${++n}`);
      mkdirSync(sub, { recursive: true });
      return path.join(sub, name);
    };

    it("renameNoReplace moves the file when the target does not exist", async () => {
      const from = fresh("state.tmp");
      const to = path.join(path.dirname(from), "state.bin");
      writeFileSync(from, "new state");
      await fs.renameNoReplace(from, to);
      expect(existsSync(from)).toBe(false);
      expect(readFileSync(to, "utf8")).toBe("new state");
    });

    it("renameNoReplace refuses an existing target with TARGET_EXISTS, leaving both files untouched", async () => {
      const from = fresh("state.tmp");
      const to = path.join(path.dirname(from), "state.bin");
      writeFileSync(from, "mine");
      writeFileSync(to, "theirs, committed first");
      const error = await rejection(fs.renameNoReplace(from, to));
      expect(isKvKeepError(error, "TARGET_EXISTS")).toBe(true);
      expect(readFileSync(to, "utf8")).toBe("theirs, committed first");
      expect(readFileSync(from, "utf8")).toBe("mine");
    });

    it("renameNoReplace of a missing source rejects with a KvKeepError and creates nothing", async () => {
      const from = fresh("missing.tmp");
      const to = path.join(path.dirname(from), "state.bin");
      const error = await rejection(fs.renameNoReplace(from, to));
      expect(isKvKeepError(error, "IO_ERROR")).toBe(true);
      expect(existsSync(to)).toBe(false);
    });

    it("fsyncFile and fsyncDir succeed on real paths", async () => {
      const file = fresh("data.bin");
      writeFileSync(file, seededBytes(10_000, 1));
      await fs.fsyncFile(file);
      await fs.fsyncDir(path.dirname(file));
    });

    it("fsyncFile and fsyncDir reject with a KvKeepError on missing paths", async () => {
      const file = fresh("data.bin");
      expect(isKvKeepError(await rejection(fs.fsyncFile(file)), "IO_ERROR")).toBe(true);
      expect(isKvKeepError(await rejection(fs.fsyncDir(path.join(dir, "no-such-dir"))), "IO_ERROR")).toBe(true);
    });

    it("fsyncDir rejects a regular file with a KvKeepError", async () => {
      const file = fresh("data.bin");
      writeFileSync(file, "x");
      expect(isKvKeepError(await rejection(fs.fsyncDir(file)))).toBe(true);
    });

    it("prefetch and dropFromPageCache run on a real file and leave its bytes unchanged", async () => {
      const file = fresh("cache.bin");
      const bytes = seededBytes(3 * 1024 * 1024 + 5, 2);
      writeFileSync(file, bytes);
      await fs.fsyncFile(file); // DONTNEED only drops clean pages
      await fs.dropFromPageCache(file);
      await fs.prefetch(file);
      await fs.dropFromPageCache(file);
      expect(readFileSync(file).equals(bytes)).toBe(true);
    });

    it("prefetch and dropFromPageCache accept an empty file", async () => {
      const file = fresh("empty.bin");
      writeFileSync(file, "");
      await fs.prefetch(file);
      await fs.dropFromPageCache(file);
    });

    it("prefetch and dropFromPageCache reject with IO_ERROR for a missing file", async () => {
      const file = fresh("missing.bin");
      expect(isKvKeepError(await rejection(fs.prefetch(file)), "IO_ERROR")).toBe(true);
      expect(isKvKeepError(await rejection(fs.dropFromPageCache(file)), "IO_ERROR")).toBe(true);
    });
  });
});

describe.skipIf(nativeSkipped)(nativeSuiteName("native rename internals"), () => {
  let dir: string;
  beforeAll(() => {
    dir = temp.make();
  });

  it("uses renameat2(RENAME_NOREPLACE) here, or says it fell back to link()", async () => {
    const { binding } = requireNative();
    const from = path.join(dir, "a.tmp");
    writeFileSync(from, "a");
    const method = await binding.renameNoReplace(from, path.join(dir, "a.bin"));
    expect(["renameat2", "link"]).toContain(method);
    if (method !== "renameat2") console.warn(`[kvkeep test] renameat2 unsupported on ${dir}; the link() fallback is in use`);
  });

  it("the link()+unlink() fallback also refuses an existing target and moves otherwise", async () => {
    const { binding } = requireNative();
    const from = path.join(dir, "b.tmp");
    const to = path.join(dir, "b.bin");
    writeFileSync(from, "mine");
    writeFileSync(to, "theirs");
    const error = await binding.renameNoReplace(from, to, true).catch((e: unknown) => e);
    expect((error as { code?: string }).code).toBe("EEXIST");
    expect(readFileSync(to, "utf8")).toBe("theirs");
    expect(readFileSync(from, "utf8")).toBe("mine");

    const to2 = path.join(dir, "b2.bin");
    expect(await binding.renameNoReplace(from, to2, true)).toBe("link");
    expect(existsSync(from)).toBe(false);
    expect(readFileSync(to2, "utf8")).toBe("mine");
  });

  it("system errors carry Node-style code, syscall and path", async () => {
    const { binding } = requireNative();
    const missing = path.join(dir, "nope");
    const error = (await binding.fsyncFile(missing).catch((e: unknown) => e)) as NodeJS.ErrnoException;
    expect(error.code).toBe("ENOENT");
    expect(error.syscall).toBe("open");
    expect(error.path).toBe(missing);
    expect(error.message).toContain("ENOENT");
  });
});
