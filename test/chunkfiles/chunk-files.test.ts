/**
 * Chunk files on a real disk: a chunk is written once and durably at its content address,
 * read back only when its bytes are the chunk its name says, never through a symlink; the
 * chunk gate lets commits in together and keeps GC out while any is in — in one process and
 * across processes; a writer killed mid-write leaves nothing at a chunk's name; two processes
 * writing the same chunks at once both succeed, with one file each.
 */
import { existsSync, promises as fs, readdirSync, statSync, symlinkSync, writeFileSync } from "node:fs";
import path from "node:path";
import { beforeAll, describe, expect, it } from "vitest";
import { ChunkFiles } from "../../src/chunkfiles/chunk-files.js";
import { chunkGateForTest } from "../../src/chunkfiles/gate.js";
import { isChunkTempName } from "../../src/chunkfiles/paths.js";
import { joinSeqState } from "../../src/chunks/state-format.js";
import { type KvKeepErrorCode } from "../../src/errors.js";
import { loadNativeFs } from "../../src/native/index.js";
import { bundleFixture, runChild } from "../helpers/child.js";
import { tempDir } from "../helpers/temp-root.js";
import { conversation } from "./conversation.js";

let worker: string;
beforeAll(async () => {
  worker = await bundleFixture("test/chunkfiles/fixtures/chunk-worker.ts");
});

function filesAt(root: string): ChunkFiles {
  return new ChunkFiles(root, loadNativeFs());
}

async function expectCode(promise: Promise<unknown>, code: KvKeepErrorCode): Promise<void> {
  await expect(promise).rejects.toMatchObject({ code });
}

/** Every file under `<root>/.kvkeep/chunks`, relative to it. */
function chunkTree(root: string): string[] {
  const base = path.join(root, ".kvkeep", "chunks");
  if (!existsSync(base)) return [];
  return (readdirSync(base, { recursive: true }) as string[]).filter((p) => statSync(path.join(base, p)).isFile()).sort();
}

describe("ChunkFiles: write, touch, read", () => {
  it("writes a chunk at <root>/.kvkeep/chunks/<context>/<id[0..2)>/<id>.kvkc and reads back exactly its bytes, verified", async () => {
    const root = tempDir();
    const files = filesAt(root);
    const c = conversation(40);
    const id = c.ids[0]!;
    expect(files.pathOf(c.context.digest, id)).toBe(path.join(root, ".kvkeep", "chunks", c.context.digest, id.slice(0, 2), `${id}.kvkc`));
    expect(await files.write(c.context.digest, id, c.chunks[0]!)).toBe(c.chunks[0]!.byteLength);
    expect(Buffer.compare((await files.read(c.context.digest, id))!, c.chunks[0]!)).toBe(0);
    expect(Buffer.compare(await files.readVerified(c.context, id, null, c.geometry), c.chunks[0]!)).toBe(0);
    // The second chunk verifies only after its parent.
    await files.write(c.context.digest, c.ids[1]!, c.chunks[1]!);
    expect(Buffer.compare(await files.readVerified(c.context.digest, c.ids[1]!, c.ids[0]!, c.geometry), c.chunks[1]!)).toBe(0);
    await expectCode(files.readVerified(c.context, c.ids[1]!, null, c.geometry), "CHUNK_CORRUPT");
    // Directories are private, like every directory kvkeep makes.
    expect(statSync(path.dirname(files.pathOf(c.context.digest, id))).mode & 0o777).toBe(0o700);
    expect(chunkTree(root).filter(isChunkTempName)).toEqual([]);
  });

  it("a second write of a chunk writes nothing, keeps the first file and touches it", async () => {
    const root = tempDir();
    const files = filesAt(root);
    const c = conversation(20);
    const file = files.pathOf(c.context.digest, c.ids[0]!);
    await files.write(c.context.digest, c.ids[0]!, c.chunks[0]!);
    const ino = statSync(file).ino;
    const past = new Date(Date.now() - 3_600_000);
    await fs.utimes(file, past, past);
    expect(await files.write(c.context.digest, c.ids[0]!, c.chunks[0]!)).toBe(0);
    expect(statSync(file).ino).toBe(ino);
    expect(statSync(file).mtimeMs).toBeGreaterThan(past.getTime() + 3_000_000);
  });

  it("touch says whether a chunk is there and sets its mtime to now (GC keeps what was touched after its start)", async () => {
    const root = tempDir();
    const files = filesAt(root);
    const c = conversation(20);
    expect(await files.touch(c.context.digest, c.ids[0]!)).toBe(false);
    await files.write(c.context.digest, c.ids[0]!, c.chunks[0]!);
    const file = files.pathOf(c.context.digest, c.ids[0]!);
    const past = new Date(Date.now() - 3_600_000);
    await fs.utimes(file, past, past);
    expect(await files.touch(c.context.digest, c.ids[0]!)).toBe(true);
    expect(statSync(file).mtimeMs).toBeGreaterThan(past.getTime() + 3_000_000);
  });

  it("touchAll says for many chunks at once which are there, sets only their mtimes, and never follows a symlink at a chunk's name", async () => {
    const root = tempDir();
    const outside = tempDir();
    const files = filesAt(root);
    const c = conversation(70);
    const ctx = c.context.digest;
    expect(await files.touchAll(ctx, c.ids)).toEqual(c.ids.map(() => false)); // no directories yet
    const past = new Date(Date.now() - 3_600_000);
    for (const i of [0, 2]) {
      await files.write(ctx, c.ids[i]!, c.chunks[i]!);
      await fs.utimes(files.pathOf(ctx, c.ids[i]!), past, past);
    }
    // A symlink at chunk 1's name, to a real copy outside the root: not a chunk, never touched through.
    const copy = path.join(outside, "copy.kvkc");
    writeFileSync(copy, c.chunks[1]!);
    await fs.utimes(copy, past, past);
    await fs.mkdir(path.dirname(files.pathOf(ctx, c.ids[1]!)), { recursive: true });
    symlinkSync(copy, files.pathOf(ctx, c.ids[1]!));
    expect(await files.touchAll(ctx, c.ids)).toEqual(c.ids.map((_, i) => i === 0 || i === 2));
    for (const i of [0, 2]) expect(statSync(files.pathOf(ctx, c.ids[i]!)).mtimeMs).toBeGreaterThan(past.getTime() + 3_000_000);
    expect(statSync(copy).mtimeMs).toBeLessThan(past.getTime() + 1_000);
  });

  it("gather joins a chain of chunk files and its tail into a memory file, byte for byte, and names a missing or mislabelled chunk", async () => {
    const root = tempDir();
    const files = filesAt(root);
    const c = conversation(70);
    const ctx = c.context.digest;
    for (const [i, id] of c.ids.entries()) await files.write(ctx, id, c.chunks[i]!);
    const memory = loadNativeFs().createMemoryFile("kvkeep-test-gather")!;
    try {
      const load = { context: c.context, ids: c.ids, geometry: c.geometry, last: c.tail, placement: { nStream: 1, streamIndex: 0, seqId: 0 } };
      for (const checksums of [false, true]) {
        expect(await files.gather(memory, { ...load, checksums })).toBe(70);
        expect((await memory.read()).equals(joinSeqState({ geometry: c.geometry, pieces: [...c.chunks, c.tail] }))).toBe(true);
      }
      // A flipped KV byte is caught with checksums (size, header and identity still fit).
      const flipped = Buffer.from(c.chunks[1]!);
      flipped[flipped.byteLength - 1]! ^= 1;
      writeFileSync(files.pathOf(ctx, c.ids[1]!), flipped);
      expect(await files.gather(memory, { ...load, checksums: false })).toBe(70);
      await expectCode(files.gather(memory, { ...load, checksums: true }), "CHUNK_CORRUPT");
      // Another conversation's chunk under this id: its tokens do not make the id.
      writeFileSync(files.pathOf(ctx, c.ids[1]!), conversation(70, { salt: 3 }).chunks[1]!);
      await expectCode(files.gather(memory, { ...load, checksums: false }), "CHUNK_CORRUPT");
      writeFileSync(files.pathOf(ctx, c.ids[1]!), c.chunks[1]!.subarray(1));
      await expectCode(files.gather(memory, { ...load, checksums: false }), "CHUNK_CORRUPT");
      await fs.unlink(files.pathOf(ctx, c.ids[1]!));
      await expectCode(files.gather(memory, { ...load, checksums: false }), "CHUNK_MISSING");
    } finally {
      memory.close();
    }
  });

  it("a missing chunk is CHUNK_MISSING; a torn, foreign or mislabelled one CHUNK_CORRUPT", async () => {
    const root = tempDir();
    const files = filesAt(root);
    const c = conversation(50);
    const other = conversation(50, { salt: 5 });
    const ctx = c.context.digest;
    await expectCode(files.readVerified(c.context, c.ids[0]!, null, c.geometry), "CHUNK_MISSING");
    expect(await files.read(ctx, c.ids[0]!)).toBeNull();

    // Torn: the first half of the bytes at the chunk's name.
    await files.write(ctx, c.ids[0]!, c.chunks[0]!.subarray(0, c.chunks[0]!.byteLength >> 1));
    await expectCode(files.readVerified(c.context, c.ids[0]!, null, c.geometry), "CHUNK_CORRUPT");
    // Mislabelled: another conversation's whole, well-formed first chunk under this one's id.
    await files.write(ctx, c.ids[1]!, other.chunks[0]!);
    await expectCode(files.readVerified(c.context, c.ids[1]!, c.ids[0]!, c.geometry), "CHUNK_CORRUPT");
    // One flipped KV byte: the checksum catches it.
    const flipped = Buffer.from(c.chunks[2]!);
    flipped[flipped.byteLength - 1]! ^= 1;
    await files.write(ctx, c.ids[2]!, flipped);
    await expectCode(files.readVerified(c.context, c.ids[2]!, c.ids[1]!, c.geometry), "CHUNK_CORRUPT");
    // The tail is no full chunk: refused under a StateContext that says 16 tokens.
    const tailId = "f".repeat(32);
    await files.write(ctx, tailId, c.tail);
    await expectCode(files.readVerified(c.context, tailId, c.ids[2]!, c.geometry), "CHUNK_CORRUPT");
  });

  it("never reads or writes through a symlink at a chunk's name or above it", async () => {
    const root = tempDir();
    const outside = tempDir();
    const files = filesAt(root);
    const c = conversation(40);
    const ctx = c.context.digest;
    // A symlink at the chunk's own name, pointing at a real copy of the chunk outside the root.
    const target = path.join(outside, "chunk");
    writeFileSync(target, c.chunks[0]!);
    await fs.mkdir(path.dirname(files.pathOf(ctx, c.ids[0]!)), { recursive: true });
    symlinkSync(target, files.pathOf(ctx, c.ids[0]!));
    await expectCode(files.read(ctx, c.ids[0]!), "UNSAFE_PATH");
    await expectCode(files.readVerified(c.context, c.ids[0]!, null, c.geometry), "CHUNK_CORRUPT");
    expect(await files.touch(ctx, c.ids[0]!)).toBe(false);
    // A write replaces the link itself; the file outside is untouched.
    const before = statSync(target).mtimeMs;
    expect(await files.write(ctx, c.ids[0]!, c.chunks[0]!)).toBe(c.chunks[0]!.byteLength);
    expect((await fs.lstat(files.pathOf(ctx, c.ids[0]!))).isFile()).toBe(true);
    expect(statSync(target).mtimeMs).toBe(before);

    // A symlinked fan-out directory: refused for reads and writes alike.
    const fan = path.dirname(files.pathOf(ctx, c.ids[1]!));
    if (!existsSync(fan)) {
      symlinkSync(outside, fan);
      await expectCode(files.read(ctx, c.ids[1]!), "UNSAFE_PATH");
      await expectCode(files.write(ctx, c.ids[1]!, c.chunks[1]!), "UNSAFE_PATH");
      expect(readdirSync(outside)).toEqual(["chunk"]);
    }
  });

  it("refuses a context or id that is not 32 lowercase hex (they become path components)", async () => {
    const files = filesAt(tempDir());
    const c = conversation(20);
    for (const bad of ["../../etc", "A".repeat(32), "", "0".repeat(31)]) {
      expect(() => files.pathOf(bad, c.ids[0]!)).toThrow(expect.objectContaining({ code: "INVALID_ARGUMENT" }));
      await expectCode(files.write(c.context.digest, bad, c.chunks[0]!), "INVALID_ARGUMENT");
    }
  });
});

describe("the chunk gate", () => {
  it("in one process: commits share it, a collector waits for them, and commits after a waiting collector wait for it", async () => {
    const root = tempDir();
    const a = filesAt(root);
    const b = filesAt(root); // a second store on the same root
    const order: string[] = [];
    let releaseFirst!: () => void;
    const first = a.withCommitGate(async () => {
      order.push("commit 1 in");
      await new Promise<void>((r) => (releaseFirst = r));
      order.push("commit 1 out");
    });
    await new Promise((r) => setImmediate(r));
    const second = b.withCommitGate(async () => {
      order.push("commit 2 in");
    });
    await second;
    const collect = b.withCollectGate(async () => {
      order.push("collect");
    });
    await new Promise((r) => setTimeout(r, 20));
    const third = a.withCommitGate(async () => {
      order.push("commit 3 in");
    });
    await new Promise((r) => setTimeout(r, 20));
    expect(order).toEqual(["commit 1 in", "commit 2 in"]);
    expect(chunkGateForTest(root).holders).toEqual({ readers: 1, writer: false, waiting: 2 });
    releaseFirst();
    await Promise.all([first, collect, third]);
    expect(order).toEqual(["commit 1 in", "commit 2 in", "commit 1 out", "collect", "commit 3 in"]);
  });

  it("a commit waiting for the gate is released by its abort signal with ABORTED, and the gate stays usable", async () => {
    const root = tempDir();
    const files = filesAt(root);
    let done!: () => void;
    const collecting = files.withCollectGate(() => new Promise<void>((r) => (done = r)));
    await new Promise((r) => setImmediate(r));
    const controller = new AbortController();
    const waiting = files.withCommitGate(async () => "ran", controller.signal);
    controller.abort();
    await expectCode(waiting, "ABORTED");
    done();
    await collecting;
    expect(await files.withCommitGate(async () => "ran")).toBe("ran");
    expect(chunkGateForTest(root).holders).toEqual({ readers: 0, writer: false, waiting: 0 });
  });

  it("across processes: a collector waits while another process holds the gate for a commit, and a commit keeps another process's collector out", async () => {
    const root = tempDir();
    const files = filesAt(root);
    if (!loadNativeFs().crossProcessLocks) return; // the JS fallback is single-process by contract
    const holder = runChild(worker, ["hold", root, "600"]);
    await holder.waitForLine((l) => l === "held");
    let holderStillIn = true;
    await files.withCollectGate(async () => {
      holderStillIn = existsSync(path.join(root, "holding"));
    });
    expect(holderStillIn).toBe(false);
    expect(await holder.exited).toBe(0);

    const collector = runChild(worker, ["collect", root]);
    let collectedMeanwhile = true;
    await files.withCommitGate(async () => {
      await new Promise((r) => setTimeout(r, 300));
      collectedMeanwhile = existsSync(path.join(root, "collected"));
    });
    expect(await collector.exited).toBe(0);
    expect(collectedMeanwhile).toBe(false);
    expect(existsSync(path.join(root, "collected"))).toBe(true);
  });
});

describe("chunk writers in other processes", () => {
  it("a writer killed after its temp is synced leaves nothing at the chunk's name, only its temp", async () => {
    const root = tempDir();
    const run = runChild(worker, ["write", root, "40", "0", "1"], { KVKEEP_TEST_CRASH_AT: "chunk:after-temp-synced" });
    expect(await run.exited).toBe("SIGKILL");
    const tree = chunkTree(root);
    expect(tree.length).toBe(1);
    expect(isChunkTempName(path.basename(tree[0]!))).toBe(true);
    const c = conversation(40);
    await expectCode(filesAt(root).readVerified(c.context, c.ids[0]!, null, c.geometry), "CHUNK_MISSING");
    // The next writer of that chunk writes it whole.
    expect(await filesAt(root).write(c.context.digest, c.ids[0]!, c.chunks[0]!)).toBe(c.chunks[0]!.byteLength);
    expect(Buffer.compare(await filesAt(root).readVerified(c.context, c.ids[0]!, null, c.geometry), c.chunks[0]!)).toBe(0);
  });

  it("a writer killed right after its rename leaves the whole chunk at its name", async () => {
    const root = tempDir();
    const run = runChild(worker, ["write", root, "40", "0", "1"], { KVKEEP_TEST_CRASH_AT: "chunk:after-rename" });
    expect(await run.exited).toBe("SIGKILL");
    const c = conversation(40);
    expect(Buffer.compare(await filesAt(root).readVerified(c.context, c.ids[0]!, null, c.geometry), c.chunks[0]!)).toBe(0);
    expect(chunkTree(root).length).toBe(1);
  });

  it("two processes writing the same chunks at once both succeed, leaving one whole file per chunk", async () => {
    const root = tempDir();
    const tokens = 16 * 40;
    const runs = [runChild(worker, ["write", root, String(tokens), "0", "3"]), runChild(worker, ["write", root, String(tokens), "0", "3"])];
    const codes = await Promise.all(runs.map((r) => r.exited));
    expect(codes, runs.map((r) => r.stderr()).join("\n")).toEqual([0, 0]);
    const c = conversation(tokens);
    // Between them they wrote each chunk exactly once (the loser of each race wrote 0 bytes).
    const written = runs.map((r) => Number(/wrote (\d+)/.exec(r.stdout())![1]));
    expect(written[0]! + written[1]!).toBe(c.chunks.reduce((n, chunk) => n + chunk.byteLength, 0));
    const tree = chunkTree(root);
    expect(tree.length).toBe(c.ids.length);
    expect(tree.filter(isChunkTempName)).toEqual([]);
    const files = filesAt(root);
    for (let i = 0; i < c.ids.length; i++) {
      expect(Buffer.compare(await files.readVerified(c.context, c.ids[i]!, i === 0 ? null : c.ids[i - 1]!, c.geometry), c.chunks[i]!)).toBe(0);
    }
  });
});
