/**
 * In-memory files (memfd) for the engine handoff: what the path names, how writes replace
 * contents, and that descriptors are never leaked — closed on close(), after a read or write
 * in flight, on a callback's failure, by garbage collection, and never inherited by children.
 * test/engine/memory-handoff.test.ts hands them to the real engine.
 */
import { spawnSync } from "node:child_process";
import { mkdtempSync, readdirSync, readFileSync, readlinkSync, readSync, rmSync, symlinkSync, writeFileSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { xxh64 } from "../../src/keys/hash.js";
import { afterAll, describe, expect, it } from "vitest";
import { withMemoryFile } from "../../src/native/memory-file.js";
import { createJsFallbackFs } from "../../src/native/fallback.js";
import type { MemoryFile } from "../../src/native/types.js";
import { bundleFixture } from "../helpers/child.js";
import { nativeSkipped, nativeSuiteName, requireNative, seededBytes } from "./helpers.js";

const onLinux = process.platform === "linux";
const open: MemoryFile[] = [];
afterAll(() => {
  for (const file of open) file.close();
});

let names = 0;
function uniqueName(): string {
  return `kvkeep-test-${process.pid}-${names++}`;
}

function create(name = uniqueName()): MemoryFile {
  const file = requireNative().fs.createMemoryFile(name);
  if (file === null) throw new Error("the native backend has no memory files on Linux");
  open.push(file);
  return file;
}

/** Descriptors of this process that are memfds named `name`. */
function memfdsNamed(name: string): number {
  let count = 0;
  for (const fd of readdirSync("/proc/self/fd")) {
    try {
      if (readlinkSync(`/proc/self/fd/${fd}`) === `/memfd:${name} (deleted)`) count++;
    } catch {
      // gone while listing
    }
  }
  return count;
}

describe("the JS fallback", () => {
  it("has no in-memory files: createMemoryFile is null, so callers keep real files", () => {
    expect(createJsFallbackFs().createMemoryFile()).toBeNull();
  });
});

describe.skipIf(nativeSkipped || !onLinux)(nativeSuiteName("native in-memory files (Linux memfd)"), () => {
  it("the path names the memory file: a gather write is read back through the fd, the path and the API", async () => {
    const name = uniqueName();
    const file = create(name);
    expect(file.path).toBe(`/proc/self/fd/${file.fd}`);
    expect(readlinkSync(file.path)).toBe(`/memfd:${name} (deleted)`);
    const parts = [seededBytes(1000, 1), new Uint8Array(0), seededBytes(70_000, 2), seededBytes(3, 3)];
    const expected = Buffer.concat(parts);
    await file.write(parts);
    expect(file.size()).toBe(expected.byteLength);
    expect((await file.read()).equals(expected)).toBe(true);
    expect(readFileSync(file.path).equals(expected)).toBe(true);
    const viaFd = Buffer.alloc(expected.byteLength);
    expect(readSync(file.fd, viaFd, 0, viaFd.byteLength, 0)).toBe(expected.byteLength);
    expect(viaFd.equals(expected)).toBe(true);
  });

  it("a gather write of more parts than one pwritev takes (IOV_MAX) lands in order", async () => {
    const file = create();
    const parts = Array.from({ length: 3000 }, (_, i) => seededBytes(1 + (i % 7), i));
    await file.write(parts);
    expect((await file.read()).equals(Buffer.concat(parts))).toBe(true);
  });

  it("a read into a caller's buffer fills it and resolves a view of exactly the file's bytes; a buffer too small is not used", async () => {
    const file = create();
    const content = seededBytes(100_000, 9);
    await file.write(content);
    const scratch = Buffer.alloc(300_000, 0xee);
    const view = await file.read(scratch);
    expect(view.byteLength).toBe(content.byteLength);
    expect(view.equals(content)).toBe(true);
    expect(view.buffer).toBe(scratch.buffer);
    expect(view.byteOffset).toBe(scratch.byteOffset);
    expect(scratch[content.byteLength]).toBe(0xee); // nothing past the file's end was touched
    const small = Buffer.alloc(10);
    const fresh = await file.read(small);
    expect(fresh.equals(content)).toBe(true);
    expect(fresh.buffer).not.toBe(small.buffer);
    await expect(file.read({} as Uint8Array)).rejects.toMatchObject({ code: "INVALID_ARGUMENT" });
  });

  it("a write replaces the whole content: a shorter one leaves nothing of the longer", async () => {
    const file = create();
    await file.write(seededBytes(50_000, 4));
    await file.write(Buffer.from("short"));
    expect(file.size()).toBe(5);
    expect((await file.read()).toString()).toBe("short");
    await file.write([]);
    expect(file.size()).toBe(0);
    expect((await file.read()).byteLength).toBe(0);
  });

  it("opening the path for writing (what llama.cpp's fopen 'wb' does) truncates the memory file, and the writer's close keeps it", async () => {
    const file = create();
    await file.write(seededBytes(10_000, 5));
    writeFileSync(file.path, "xy"); // open O_WRONLY|O_CREAT|O_TRUNC, write, close
    expect(file.size()).toBe(2);
    expect((await file.read()).toString()).toBe("xy");
    expect(file.fd).toBeGreaterThanOrEqual(0);
  });

  it("close is idempotent and frees the descriptor; later calls fail with IO_ERROR", async () => {
    const name = uniqueName();
    const file = create(name);
    await file.write(Buffer.from("data"));
    expect(memfdsNamed(name)).toBe(1);
    file.close();
    file.close();
    expect(file.fd).toBe(-1);
    expect(memfdsNamed(name)).toBe(0);
    expect(() => file.size()).toThrow(expect.objectContaining({ code: "IO_ERROR" }));
    await expect(file.read()).rejects.toMatchObject({ code: "IO_ERROR" });
    await expect(file.write(Buffer.from("x"))).rejects.toMatchObject({ code: "IO_ERROR" });
  });

  it("a close while a read or a write is in flight waits for it: the read gets every byte, the descriptor goes after", async () => {
    const name = uniqueName();
    const file = create(name);
    const content = seededBytes(32 << 20, 6);
    const writing = file.write(content);
    file.close(); // asked for during the write
    expect(file.fd).toBe(-1);
    await writing;
    expect(memfdsNamed(name)).toBe(0);

    const name2 = uniqueName();
    const second = create(name2);
    await second.write(content);
    const reading = second.read();
    second.close();
    expect((await reading).equals(content)).toBe(true);
    expect(memfdsNamed(name2)).toBe(0);
  });

  it("refuses a write of anything but Uint8Arrays and a name that memfd_create cannot take (INVALID_ARGUMENT)", async () => {
    const file = create();
    await expect(file.write([{} as Uint8Array])).rejects.toMatchObject({ code: "INVALID_ARGUMENT" });
    await expect(file.write([new Uint16Array(2) as unknown as Uint8Array])).rejects.toMatchObject({ code: "INVALID_ARGUMENT" });
    expect(() => requireNative().fs.createMemoryFile("x".repeat(250))).toThrow(expect.objectContaining({ code: "INVALID_ARGUMENT" }));
    expect(() => requireNative().fs.createMemoryFile("a\0b")).toThrow(expect.objectContaining({ code: "INVALID_ARGUMENT" }));
  });

  it("withMemoryFile closes the file when the callback fails, and after it succeeds", async () => {
    const name = uniqueName();
    let seen: MemoryFile | undefined;
    await expect(
      withMemoryFile(
        requireNative().fs,
        async (file) => {
          seen = file;
          await file.write(Buffer.from("x"));
          throw new Error("the engine failed");
        },
        name,
      ),
    ).rejects.toThrow("the engine failed");
    expect(seen?.fd).toBe(-1);
    expect(await withMemoryFile(requireNative().fs, async (file) => (await file.write(Buffer.from("ok")), (await file.read()).toString()), name)).toBe("ok");
    expect(memfdsNamed(name)).toBe(0);
    expect(await withMemoryFile(createJsFallbackFs(), async () => "never")).toBeNull();
  });

  describe("gather: the file assembled from ranges of other files and of buffers", () => {
    const dir = mkdtempSync(path.join(os.tmpdir(), "kvkeep-gather-"));
    afterAll(() => rmSync(dir, { recursive: true, force: true }));
    /** A file of `bytes` in the test's directory, as a gather names it. */
    const fileOf = (name: string, bytes: Buffer, prefixBytes: number) => {
      writeFileSync(path.join(dir, name), bytes);
      return { path: path.join(dir, name), size: bytes.byteLength, prefixBytes };
    };
    const a = seededBytes(300_000, 11);
    const b = seededBytes(5_000, 12);
    const literal = seededBytes(64, 13);
    const files = [fileOf("a", a, 10), fileOf("b", b, 0)];
    /** (source, src, dst, length) quadruples as the gather's runs: one copy each. */
    const plain = (quads: number[]): number[] => quads.flatMap((v, i) => (i % 4 === 3 ? [v, 1, 0, 0] : [v]));
    // dst: literal[0..16) | a[1000..201000) | b[0..5000) | a[0..10) — one file's runs together, in any dst order
    const runs = new Float64Array(plain([0, 1000, 16, 200_000, 0, 0, 205_016, 10, 1, 0, 200_016, 5_000, 2, 0, 0, 16]));
    const size = 205_026;
    const expected = Buffer.concat([literal.subarray(0, 16), a.subarray(1000, 201_000), b, a.subarray(0, 10)]);

    it("puts every range where the runs say, returns each file's prefix and, when asked, its XXH64", async () => {
      const file = create();
      await file.write(seededBytes(500_000, 14)); // a longer old content is replaced entirely
      const result = await file.gather({ size, files, literals: [literal], runs, checksumFrom: 3 });
      expect((await file.read()).equals(expected)).toBe(true);
      expect(result.prefixes.map((p) => Buffer.from(p))).toEqual([Buffer.from(a.subarray(0, 10)), Buffer.alloc(0)]);
      expect(result.digests).toEqual([xxh64(a.subarray(3)), xxh64(b.subarray(3))]);
      expect((await file.gather({ size, files, literals: [literal], runs })).digests).toEqual([]);
    });

    it("refuses a file of another size (EWRONGSIZE), a missing one (ENOENT) and a symlink (ELOOP), naming it", async () => {
      const file = create();
      await expect(file.gather({ size, files: [{ ...files[0]!, size: a.byteLength - 1 }, files[1]!], literals: [literal], runs })).rejects.toMatchObject({
        code: "EWRONGSIZE",
        path: files[0]!.path,
      });
      await expect(file.gather({ size, files: [files[0]!, { ...files[1]!, path: path.join(dir, "nope") }], literals: [literal], runs })).rejects.toMatchObject({
        code: "ENOENT",
      });
      symlinkSync(path.join(dir, "a"), path.join(dir, "link"));
      await expect(file.gather({ size, files: [{ ...files[0]!, path: path.join(dir, "link") }, files[1]!], literals: [literal], runs })).rejects.toMatchObject({
        code: "ELOOP",
      });
    });

    it("refuses runs that leave a gap, reach past a source or the file, or split one file's runs (INVALID_ARGUMENT / IO_ERROR)", async () => {
      const file = create();
      const bad = (r: number[]) => file.gather({ size, files, literals: [literal], runs: new Float64Array(r) });
      await expect(bad([...runs].slice(0, 21))).rejects.toThrow(/do not cover/);
      await expect(bad([...plain([2, 60, 0, 16]), ...[...runs].slice(0, 21)])).rejects.toThrow(/past its literal/);
      await expect(bad(plain([0, 1000, 16, 200_000, 1, 0, 200_016, 5_000, 0, 0, 205_016, 10, 2, 0, 0, 16]))).rejects.toThrow(/together/);
      await expect(bad(plain([0, 0, size, 1]))).rejects.toThrow(/past the file's size/);
      await expect(file.gather({ size, files, literals: [literal], runs: new Float64Array([0, 1, 0, 1]) })).rejects.toMatchObject({ code: "INVALID_ARGUMENT" });
      await expect(file.gather({ size, files, literals: [literal], runs: new Float64Array(plain([-1, 0, 0, 1])) })).rejects.toMatchObject({ code: "INVALID_ARGUMENT" });
    });

    // Two "chunks" of 10 rows each (rows of 30 and 20 bytes, back to back in each file) and a
    // literal of 10 rows of 5: row j of the result is row j of each in turn — a transposed V.
    const c = seededBytes(300, 15);
    const d = seededBytes(200, 16);
    const rowsLiteral = seededBytes(50, 17);
    const rowFiles = [fileOf("c", c, 4), fileOf("d", d, 0)];
    const strided = new Float64Array([0, 0, 0, 30, 10, 30, 55, 1, 0, 30, 20, 10, 20, 55, 2, 0, 50, 5, 10, 5, 55]);
    const interleaved = Buffer.concat(
      Array.from({ length: 10 }, (_, j) => [c.subarray(30 * j, 30 * j + 30), d.subarray(20 * j, 20 * j + 20), rowsLiteral.subarray(5 * j, 5 * j + 5)]).flat(),
    );

    it("a strided run copies `count` rows from one file or literal, each to its own row of the result (with and without checksums)", async () => {
      const file = create();
      for (const checksumFrom of [undefined, 0]) {
        const result = await file.gather({ size: 550, files: rowFiles, literals: [rowsLiteral], runs: strided, checksumFrom });
        expect((await file.read()).equals(interleaved)).toBe(true);
        expect(Buffer.from(result.prefixes[0]!).equals(c.subarray(0, 4))).toBe(true);
        expect(result.digests).toEqual(checksumFrom === undefined ? [] : [xxh64(c), xxh64(d)]);
      }
    });

    it("refuses a strided run whose last row reads past its file, or with no rows", async () => {
      const file = create();
      const bad = (r: number[]) => file.gather({ size: 550, files: rowFiles, literals: [rowsLiteral], runs: new Float64Array(r) });
      const tail = [...strided].slice(7);
      await expect(bad([0, 1, 0, 30, 10, 30, 55, ...tail])).rejects.toThrow(/past its file's end/);
      await expect(bad([0, 0, 0, 30, 0, 30, 55, ...tail])).rejects.toThrow(/no copies/);
    });

    it("files beyond one 32 MiB batch: three 12 MiB files of 1 024 rows interleave row by row", async () => {
      const rows = 1024;
      const rowBytes = 12 * 1024;
      const big = [0, 1, 2].map((f) => fileOf(`big${f}`, seededBytes(rows * rowBytes, 30 + f), 8));
      const runs = new Float64Array(big.flatMap((_, f) => [f, 0, f * rowBytes, rowBytes, rows, rowBytes, 3 * rowBytes]));
      const expected = Buffer.alloc(3 * rows * rowBytes);
      const contents = [0, 1, 2].map((f) => seededBytes(rows * rowBytes, 30 + f));
      for (let j = 0; j < rows; j++) {
        for (let f = 0; f < 3; f++) contents[f]!.copy(expected, (3 * j + f) * rowBytes, j * rowBytes, (j + 1) * rowBytes);
      }
      const file = create();
      const result = await file.gather({ size: expected.byteLength, files: big, literals: [], runs, checksumFrom: 0 });
      expect((await file.read()).equals(expected)).toBe(true);
      expect(result.digests).toEqual(contents.map((c) => xxh64(c)));
    });

    it("refuses runs that write a byte twice, even when their byte count equals the size (a byte left unwritten would keep the file's earlier content)", async () => {
      const file = create();
      const bad = (r: number[], size = 550) => file.gather({ size, files: rowFiles, literals: [rowsLiteral], runs: new Float64Array(r) });
      // Two copies of one run onto the same bytes (destination stride 0).
      await expect(bad([0, 0, 0, 10, 2, 10, 0], 20)).rejects.toThrow(/overlap in the file/);
      // Rows of a strided run overlapping each other (destination stride 29 < 30 bytes).
      await expect(bad([0, 0, 0, 30, 10, 30, 29, ...plain([1, 0, 291, 200, 2, 0, 491, 50])])).rejects.toThrow(/overlap in the file/);
      // Two strided runs whose pieces of a row overlap (d's starts at 29, inside c's 30 bytes).
      await expect(bad([0, 0, 0, 30, 10, 30, 55, 1, 0, 29, 20, 10, 20, 55, 2, 0, 50, 5, 10, 5, 55])).rejects.toThrow(/overlap in the file/);
      // Plain runs overlapping: [0, 300) and [299, 499), then [499, 549): byte 549 never written.
      await expect(bad(plain([0, 0, 0, 300, 1, 0, 299, 200, 2, 0, 499, 50]))).rejects.toThrow(/overlap in the file/);
      // A plain run inside a strided run's rows.
      await expect(bad([0, 0, 0, 30, 10, 30, 55, 1, 0, 30, 20, 10, 20, 55, ...plain([2, 0, 100, 50])])).rejects.toThrow(/overlap in the file/);
    });
  });

  it("readRanges reads only the ranges asked for, at their offsets, and refuses a file of another size", async () => {
    const file = create();
    const content = seededBytes(100_000, 21);
    await file.write(content);
    const into = Buffer.alloc(120_000, 0xaa);
    await file.readRanges(into, new Float64Array([0, 10, 50_000, 30_000, 99_990, 10]), 100_000);
    expect(into.subarray(0, 10).equals(content.subarray(0, 10))).toBe(true);
    expect(into.subarray(50_000, 80_000).equals(content.subarray(50_000, 80_000))).toBe(true);
    expect(into.subarray(99_990, 100_000).equals(content.subarray(99_990))).toBe(true);
    expect(into.subarray(10, 50_000).every((b) => b === 0xaa)).toBe(true);
    await expect(file.readRanges(into, new Float64Array([0, 10]), 99_999)).rejects.toMatchObject({ code: "IO_ERROR" });
    await expect(file.readRanges(into, new Float64Array([99_995, 10]), 100_000)).rejects.toMatchObject({ code: "INVALID_ARGUMENT" });
    await expect(file.readRanges(Buffer.alloc(10), new Float64Array([0, 5]), 100_000)).rejects.toMatchObject({ code: "INVALID_ARGUMENT" });
  });

  it("a thousand files created and closed leave no descriptor behind", () => {
    const name = uniqueName();
    for (let i = 0; i < 1000; i++) create(name).close();
    expect(memfdsNamed(name)).toBe(0);
  });

  it("a child process does not inherit the descriptor (MFD_CLOEXEC)", () => {
    const name = uniqueName();
    create(name);
    expect(memfdsNamed(name)).toBe(1);
    const listing = spawnSync("sh", ["-c", "ls -l /proc/$$/fd"], { encoding: "utf8", timeout: 10_000 });
    expect(listing.status).toBe(0);
    expect(listing.stdout).not.toContain(name);
  });

  it("a file dropped without close() is closed when garbage-collected (child process)", async () => {
    const script = await bundleFixture("test/native/fixtures/memory-file-child.ts");
    const run = spawnSync(process.execPath, ["--expose-gc", script, "gc"], { encoding: "utf8", timeout: 30_000, env: { ...process.env, KVKEEP_NO_NATIVE: "" } });
    expect(run.status, run.stderr).toBe(0);
    expect(JSON.parse(run.stdout.trim().split("\n").pop()!)).toEqual({ before: 3, after: 0 });
  });

  it("a write past RLIMIT_FSIZE fails with IO_ERROR (EFBIG) instead of killing the process (child process)", async () => {
    const script = await bundleFixture("test/native/fixtures/memory-file-child.ts");
    const run = spawnSync("bash", ["-c", `ulimit -f 1024 && exec "${process.execPath}" "${script}" fsize`], {
      encoding: "utf8",
      timeout: 30_000,
      env: { ...process.env, KVKEEP_NO_NATIVE: "" },
    });
    expect(run.status, run.stderr).toBe(0);
    const result = JSON.parse(run.stdout.trim().split("\n").pop()!) as { code?: string; message?: string };
    expect(result.code).toBe("IO_ERROR");
    expect(result.message).toContain("EFBIG");
  });
});
