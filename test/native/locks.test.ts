import { existsSync, readdirSync, readlinkSync, rmdirSync } from "node:fs";
import path from "node:path";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { isKvKeepError, KvKeepError } from "../../src/errors.js";
import type { LockHandle, NativeFs } from "../../src/native/types.js";
import {
  backends,
  childTry,
  LockChild,
  nativeSkipped,
  nativeSuiteName,
  requireNative,
  settle,
  suiteName,
  TempDirs,
  track,
} from "./helpers.js";

const temp = new TempDirs();
afterAll(() => temp.cleanup());

/** Handles a test took, released afterwards even when it fails midway. */
const taken: LockHandle[] = [];
function keep<T extends LockHandle | null>(handle: T): T {
  if (handle) taken.push(handle);
  return handle;
}
afterEach(() => {
  for (const handle of taken.splice(0)) handle.release();
});

/** Open fds of this process that point at `file` (Linux /proc), to prove waits leak nothing. */
function fdsOpenOn(file: string): number {
  if (!existsSync("/proc/self/fd")) return 0;
  let count = 0;
  for (const fd of readdirSync("/proc/self/fd")) {
    try {
      const target = readlinkSync(`/proc/self/fd/${fd}`);
      if (target === file || target === `${file} (deleted)`) count++;
    } catch {
      // closed between readdir and readlink
    }
  }
  return count;
}

// The single-process semantics, written once, run against both backends.
describe.each(backends)("lock semantics", (backend) => {
  describe.skipIf(backend.skip)(suiteName(backend, "lock semantics"), () => {
    let fs: NativeFs;
    let dir: string;
    beforeAll(() => {
      fs = backend.get();
      dir = temp.make();
    });
    let n = 0;
    const lockPath = (): string => path.join(dir, `k${++n}`, "nested", "file.lock");

    it("creates the lock file and its missing parent directories", () => {
      const file = lockPath();
      const handle = keep(fs.tryLockFile(file, "exclusive"));
      expect(handle).not.toBeNull();
      expect(existsSync(file)).toBe(true);
      expect(handle!.path).toBe(file);
      expect(handle!.mode).toBe("exclusive");
    });

    it("an exclusive lock excludes every other exclusive or shared attempt until released", () => {
      const file = lockPath();
      const first = keep(fs.tryLockFile(file, "exclusive"))!;
      expect(fs.tryLockFile(file, "exclusive")).toBeNull();
      expect(fs.tryLockFile(file, "shared")).toBeNull();
      first.release();
      expect(keep(fs.tryLockFile(file, "exclusive"))).not.toBeNull();
    });

    it("shared locks coexist, and a shared lock excludes an exclusive one", () => {
      const file = lockPath();
      const a = keep(fs.tryLockFile(file, "shared"))!;
      const b = keep(fs.tryLockFile(file, "shared"))!;
      expect(a).not.toBeNull();
      expect(b).not.toBeNull();
      expect(fs.tryLockFile(file, "exclusive")).toBeNull();
      a.release();
      expect(fs.tryLockFile(file, "exclusive")).toBeNull();
      b.release();
      expect(keep(fs.tryLockFile(file, "exclusive"))).not.toBeNull();
    });

    it("release and unlinkAndRelease are idempotent", () => {
      const file = lockPath();
      const handle = fs.tryLockFile(file, "exclusive")!;
      handle.release();
      handle.release();
      handle.unlinkAndRelease(); // after release: no-op, the file stays
      expect(existsSync(file)).toBe(true);
      const again = fs.tryLockFile(file, "exclusive")!;
      again.unlinkAndRelease();
      again.unlinkAndRelease();
      again.release();
      expect(existsSync(file)).toBe(false);
    });

    it("unlinkAndRelease refuses a shared lock (other readers may hold the file)", () => {
      const file = lockPath();
      const shared = keep(fs.tryLockFile(file, "shared"))!;
      expect(() => shared.unlinkAndRelease()).toThrow(KvKeepError);
      expect(existsSync(file)).toBe(true);
    });

    it("lockFile waits while the lock is held and acquires once the holder releases", async () => {
      const file = lockPath();
      const holder = fs.tryLockFile(file, "exclusive")!;
      const waiter = track(fs.lockFile(file, "exclusive"));
      await settle();
      expect(waiter.settled).toBe(false);
      holder.release();
      const handle = keep(await waiter.promise);
      expect(handle.mode).toBe("exclusive");
      expect(fs.tryLockFile(file, "shared")).toBeNull();
    });

    it("lockFile for a shared lock waits only for the exclusive holder", async () => {
      const file = lockPath();
      const holder = fs.tryLockFile(file, "exclusive")!;
      const readers = [track(fs.lockFile(file, "shared")), track(fs.lockFile(file, "shared"))];
      await settle();
      expect(readers.some((r) => r.settled)).toBe(false);
      holder.release();
      for (const reader of readers) keep(await reader.promise);
      expect(fs.tryLockFile(file, "exclusive")).toBeNull();
    });

    it("lockFile rejects with ABORTED when the signal aborts while waiting, and leaves the lock alone", async () => {
      const file = lockPath();
      const holder = fs.tryLockFile(file, "exclusive")!;
      const controller = new AbortController();
      const waiter = track(fs.lockFile(file, "exclusive", { signal: controller.signal }));
      await settle();
      expect(waiter.settled).toBe(false);
      const reason = new Error("request cancelled");
      controller.abort(reason);
      const error = await waiter.promise.catch((e: unknown) => e);
      expect(isKvKeepError(error, "ABORTED")).toBe(true);
      expect((error as KvKeepError).cause).toBe(reason);
      holder.release();
      // The aborted waiter did not take the lock later on.
      await settle();
      expect(keep(fs.tryLockFile(file, "exclusive"))).not.toBeNull();
      if (fs.kind !== "js-fallback") expect(fdsOpenOn(file)).toBe(1); // only the handle just taken
    });

    it("lockFile rejects with ABORTED at once when the signal is already aborted, even if the lock is free", async () => {
      const file = lockPath();
      const controller = new AbortController();
      controller.abort();
      const error = await fs.lockFile(file, "exclusive", { signal: controller.signal }).catch((e: unknown) => e);
      expect(isKvKeepError(error, "ABORTED")).toBe(true);
      expect(keep(fs.tryLockFile(file, "exclusive"))).not.toBeNull();
    });

    it("a waiter that opened the lock file before unlinkAndRelease ends up holding the re-created file", async () => {
      const file = lockPath();
      const holder = fs.tryLockFile(file, "exclusive")!;
      const waiter = track(fs.lockFile(file, "exclusive")); // native: has the old inode open
      await settle();
      holder.unlinkAndRelease();
      const handle = keep(await waiter.promise);
      expect(handle.path).toBe(file);
      // The waiter holds the file that is at the path now, not the orphaned inode:
      // a newcomer cannot lock the path.
      expect(existsSync(file)).toBe(true);
      expect(fs.tryLockFile(file, "exclusive")).toBeNull();
      expect(fs.tryLockFile(file, "shared")).toBeNull();
    });

    it("a waiter whose lock file and directory were pruned re-creates both and holds the new file", async () => {
      const file = lockPath();
      const holder = fs.tryLockFile(file, "exclusive")!;
      const waiter = track(fs.lockFile(file, "exclusive"));
      await settle();
      holder.unlinkAndRelease();
      rmdirSync(path.dirname(file)); // what pruning an emptied key directory does
      keep(await waiter.promise);
      expect(existsSync(file)).toBe(true);
      expect(fs.tryLockFile(file, "exclusive")).toBeNull();
    });

    it("a waiter whose file was unlinked and re-locked by a newcomer keeps waiting for the newcomer", async () => {
      const file = lockPath();
      const holder = fs.tryLockFile(file, "exclusive")!;
      const waiter = track(fs.lockFile(file, "exclusive"));
      await settle();
      holder.unlinkAndRelease();
      const newcomer = fs.tryLockFile(file, "exclusive"); // re-creates the file first
      expect(newcomer).not.toBeNull();
      await settle();
      expect(waiter.settled).toBe(false);
      newcomer!.release();
      keep(await waiter.promise);
      expect(fs.tryLockFile(file, "exclusive")).toBeNull();
    });

    it("rejects a bad mode or an empty path with INVALID_ARGUMENT", async () => {
      expect(() => fs.tryLockFile("", "exclusive")).toThrow(KvKeepError);
      expect(() => fs.tryLockFile(lockPath(), "bogus" as "shared")).toThrow(KvKeepError);
      const error = await fs.lockFile(lockPath(), "bogus" as "shared").catch((e: unknown) => e);
      expect(isKvKeepError(error, "INVALID_ARGUMENT")).toBe(true);
    });

    it("reports a lock file that cannot be created under a file (not a directory) as a KvKeepError (UNSAFE_PATH)", () => {
      const file = path.join(dir, "missing-parent-is-a-file");
      const blocker = keep(fs.tryLockFile(file, "exclusive"))!; // a regular file where a directory should be
      expect(blocker).not.toBeNull();
      let error: unknown;
      try {
        fs.tryLockFile(path.join(file, "child.lock"), "exclusive");
      } catch (e) {
        error = e;
      }
      expect(isKvKeepError(error, "UNSAFE_PATH")).toBe(true);
    });
  });
});

// What only the native backend can do: exclude other processes.
describe.skipIf(nativeSkipped)(nativeSuiteName("cross-process locks (native flock)"), () => {
  let fs: NativeFs;
  let dir: string;
  const children: LockChild[] = [];
  beforeAll(() => {
    fs = requireNative().fs;
    dir = temp.make();
  });
  afterEach(() => {
    for (const child of children.splice(0)) child.kill();
  });
  let n = 0;
  const lockPath = (): string => path.join(dir, `p${++n}`, "file.lock");
  const spawnChild = (args: string[]): LockChild => {
    const child = LockChild.native(args);
    children.push(child);
    return child;
  };

  it("an exclusive lock excludes a real child process until it is released", async () => {
    const file = lockPath();
    const handle = fs.tryLockFile(file, "exclusive")!;
    expect(await childTry(file, "exclusive")).toBe("busy");
    expect(await childTry(file, "shared")).toBe("busy");
    handle.release();
    expect(await childTry(file, "exclusive")).toBe("acquired");
  });

  it("a shared lock lets a child share it but excludes the child's exclusive attempt", async () => {
    const file = lockPath();
    const handle = keep(fs.tryLockFile(file, "shared"))!;
    expect(await childTry(file, "shared")).toBe("acquired");
    expect(await childTry(file, "exclusive")).toBe("busy");
    handle.release();
    expect(await childTry(file, "exclusive")).toBe("acquired");
  });

  it("a lock held by a child excludes this process, and lockFile acquires when the child releases", async () => {
    const file = lockPath();
    const child = spawnChild([file, "exclusive", "hold"]);
    await child.expectLine("locked");
    expect(fs.tryLockFile(file, "shared")).toBeNull();
    const waiter = track(fs.lockFile(file, "exclusive"));
    await settle();
    expect(waiter.settled).toBe(false);
    child.send("release");
    await child.expectLine("released");
    keep(await waiter.promise);
    await child.exited;
  });

  it("a child killed with SIGKILL while holding the lock releases it (the OS closes its fd)", async () => {
    const file = lockPath();
    const child = spawnChild([file, "exclusive", "hold"]);
    await child.expectLine("locked");
    expect(fs.tryLockFile(file, "exclusive")).toBeNull();
    child.kill();
    const { signal } = await child.exited;
    expect(signal).toBe("SIGKILL");
    // Poll (lockFile) rather than assert a delay; the generous signal only stops a hang.
    keep(await fs.lockFile(file, "exclusive", { signal: AbortSignal.timeout(20_000) }));
  });

  it("a child that opened the lock file before unlinkAndRelease ends up holding the re-created file", async () => {
    const file = lockPath();
    const holder = fs.tryLockFile(file, "exclusive")!;
    const child = spawnChild([file, "exclusive", "wait-then-hold"]);
    await child.expectLine("waiting"); // the child has the current (soon orphaned) inode open
    holder.unlinkAndRelease();
    await child.expectLine("locked");
    expect(existsSync(file)).toBe(true);
    // Without the identity check the child would hold the orphan and this would succeed.
    expect(fs.tryLockFile(file, "exclusive")).toBeNull();
    child.send("release");
    await child.expectLine("released");
    expect(keep(fs.tryLockFile(file, "exclusive"))).not.toBeNull();
  });

  it("two handles in one process conflict like two processes (flock is per open file)", () => {
    const file = lockPath();
    keep(fs.tryLockFile(file, "exclusive"));
    expect(fs.tryLockFile(file, "exclusive")).toBeNull();
  });
});
