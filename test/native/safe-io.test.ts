/**
 * The safe-open primitives both backends give (and the Bare/QVAC port will take from the
 * addon): `identity` from lstat, `readFileBounded` through an O_NOFOLLOW | O_NONBLOCK
 * descriptor checked to be a regular file within a bound, every read primitive refusing a
 * symlink or non-file, and lock files opened below a root without following a symlink at
 * any level. FIFO and device cases run in a child process with a kill timeout.
 */
import { existsSync, lstatSync, mkdirSync, readdirSync, statSync, symlinkSync, utimesSync, writeFileSync } from "node:fs";
import path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { isKvKeepError } from "../../src/errors.js";
import type { NativeFs } from "../../src/native/types.js";
import { bundleFixture, runChild } from "../helpers/child.js";
import { backends, suiteName, TempDirs } from "./helpers.js";

const temp = new TempDirs();
afterAll(() => temp.cleanup());
const KILL_AFTER_MS = 20_000;
let child: string;
beforeAll(async () => {
  child = await bundleFixture("test/native/fixtures/safe-io-child.ts");
});

async function codeOf(run: () => unknown): Promise<string | undefined> {
  try {
    await run();
    return undefined;
  } catch (error) {
    return isKvKeepError(error) ? error.code : `not a KvKeepError: ${String(error)}`;
  }
}

describe.each(backends)("safe file access", (backend) => {
  describe.skipIf(backend.skip)(suiteName(backend, "safe file access"), () => {
    let fs: NativeFs;
    let dir: string;
    let n = 0;
    beforeAll(() => {
      fs = backend.get();
      dir = temp.make();
    });
    const fresh = (): string => {
      const sub = path.join(dir, `case${++n}`);
      mkdirSync(sub, { recursive: true });
      return sub;
    };

    it("touchFiles sets the mtime of regular files to now and says which it touched: nothing for a missing path, a symlink (its target untouched) or a directory", async () => {
      const sub = fresh();
      const file = path.join(sub, "f");
      const target = path.join(sub, "target");
      writeFileSync(file, "x");
      writeFileSync(target, "y");
      const past = new Date(Date.now() - 3_600_000);
      utimesSync(file, past, past);
      utimesSync(target, past, past);
      symlinkSync(target, path.join(sub, "link"));
      mkdirSync(path.join(sub, "dir"));
      const touched = await fs.touchFiles([file, path.join(sub, "missing"), path.join(sub, "link"), path.join(sub, "dir"), path.join(sub, "no", "parent")]);
      expect(touched).toEqual([true, false, false, false, false]);
      expect(statSync(file).mtimeMs).toBeGreaterThan(past.getTime() + 3_000_000);
      expect(statSync(target).mtimeMs).toBeLessThan(past.getTime() + 1_000);
      expect(await fs.touchFiles([])).toEqual([]);
    });

    it("identity is lstat's: type, size, inode and mtime in ns exactly as Node's bigint lstat; null when nothing is there", async () => {
      const d = fresh();
      const file = path.join(d, "f");
      writeFileSync(file, "12345");
      const st = lstatSync(file, { bigint: true });
      expect(await fs.identity(file)).toEqual({ type: "file", size: 5, ino: st.ino.toString(), mtimeNs: st.mtimeNs.toString() });
      symlinkSync(file, path.join(d, "link"));
      const link = lstatSync(path.join(d, "link"), { bigint: true });
      expect(await fs.identity(path.join(d, "link"))).toMatchObject({ type: "symlink", ino: link.ino.toString() });
      expect(await fs.identity(d)).toMatchObject({ type: "directory" });
      expect(await fs.identity(path.join(d, "none"))).toBeNull();
      expect(await fs.identity(path.join(file, "below-a-file"))).toBeNull();
    });

    it("readFileBounded reads a regular file whole with the identity of what it read; null when missing", async () => {
      const d = fresh();
      const file = path.join(d, "f");
      writeFileSync(file, "manifest text");
      const read = await fs.readFileBounded(file, 1024);
      expect(read!.data.toString()).toBe("manifest text");
      expect(read!.identity).toEqual(await fs.identity(file));
      expect(await fs.readFileBounded(path.join(d, "none"), 1024)).toBeNull();
      expect((await fs.readFileBounded(file, 13))!.data.length).toBe(13); // exactly the bound is fine
    });

    it("readFileBounded refuses a file over the bound without reading it (IO_ERROR saying so)", async () => {
      const file = path.join(fresh(), "big");
      writeFileSync(file, Buffer.alloc(2048, 7));
      const error = await fs.readFileBounded(file, 1024).catch((e: unknown) => e);
      expect(error).toMatchObject({ code: "IO_ERROR", message: expect.stringContaining("larger than 1024 bytes") });
    });

    it("every read primitive refuses a symlink (even to a good file) and a directory with UNSAFE_PATH", async () => {
      const d = fresh();
      const file = path.join(d, "f");
      writeFileSync(file, "x");
      const link = path.join(d, "link");
      symlinkSync(file, link);
      for (const target of [link, d]) {
        expect(await codeOf(() => fs.readFileBounded(target, 1024)), target).toBe("UNSAFE_PATH");
        expect(await codeOf(() => fs.xxh64File(target)), target).toBe("UNSAFE_PATH");
        expect(await codeOf(() => fs.prefetch(target)), target).toBe("UNSAFE_PATH");
      }
      expect(await codeOf(() => fs.fsyncFile(link))).toBe("UNSAFE_PATH");
    });

    it("a lock below `under` is never opened through a symlink at any level: nothing is created or opened outside", () => {
      const d = fresh();
      const root = path.join(d, "root");
      const outside = path.join(d, "outside");
      mkdirSync(root);
      mkdirSync(outside);
      symlinkSync(outside, path.join(root, "key"));
      expect(() => fs.tryLockFile(path.join(root, "key", "m", "h.lock"), "exclusive", { under: root })).toThrow(
        expect.objectContaining({ code: "UNSAFE_PATH" }),
      );
      symlinkSync(path.join(outside, "made-by-lock"), path.join(root, "dangling.lock"));
      expect(() => fs.tryLockFile(path.join(root, "dangling.lock"), "exclusive", { under: root })).toThrow(
        expect.objectContaining({ code: "UNSAFE_PATH" }),
      );
      expect(readdirSync(outside)).toEqual([]);
      // Missing levels are made (real directories), and the lock works.
      const lock = fs.tryLockFile(path.join(root, "a", "b", "h.lock"), "exclusive", { under: root });
      expect(lock).not.toBeNull();
      expect(lstatSync(path.join(root, "a", "b")).isDirectory()).toBe(true);
      lock!.unlinkAndRelease();
      expect(existsSync(path.join(root, "a", "b", "h.lock"))).toBe(false);
      expect(() => fs.tryLockFile(path.join(outside, "x.lock"), "exclusive", { under: root })).toThrow(
        expect.objectContaining({ code: "INVALID_ARGUMENT", argument: "under" }),
      );
    });

    it("a FIFO, a device node and a symlink to /dev/zero are refused at once by every primitive (child process, kill timeout)", async () => {
      const run = runChild(child, [backend.name, fresh()]);
      const timer = setTimeout(() => run.child.kill("SIGKILL"), KILL_AFTER_MS);
      const code = await run.exited;
      clearTimeout(timer);
      expect(code, `the child ${code === "SIGKILL" ? "hung and was killed" : "failed"}: ${run.stderr()}`).toBe(0);
      const results = JSON.parse(run.stdout().trim()) as Record<string, Record<string, string>>;
      const refused = { readFileBounded: "UNSAFE_PATH", xxh64File: "UNSAFE_PATH", prefetch: "UNSAFE_PATH", fsyncFile: "UNSAFE_PATH", tryLockFile: "UNSAFE_PATH" };
      expect(results.fifo).toEqual({ identity: "ok:fifo", ...refused });
      expect(results["link-to-zero"]).toEqual({ identity: "ok:symlink", ...refused });
      if (results.device) expect(results.device).toEqual({ identity: "ok:char-device", ...refused });
      else console.warn("SKIPPED the device-node case: mknod is not possible here");
    }, KILL_AFTER_MS + 10_000);
  });
});
