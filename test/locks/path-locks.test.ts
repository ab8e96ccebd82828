/** The per-path lock table: FIFO in process, OS lock second, and no way to wedge a path. */
import { describe, expect, it } from "vitest";
import { KvKeepError } from "../../src/errors.js";
import { PathLockTable } from "../../src/locks/path-locks.js";
import type { LockHandle, NativeFs } from "../../src/native/index.js";

/** A cross-process backend whose lock-file removal always fails (e.g. EACCES on a shared root). */
function backendWhoseUnlinkFails(): NativeFs & { released: number } {
  const handle = (path: string, counter: { released: number }): LockHandle => ({
    path,
    mode: "exclusive",
    release: () => {
      counter.released++;
    },
    unlinkAndRelease: () => {
      counter.released++;
      throw new KvKeepError("IO_ERROR", "removing the lock file failed: EACCES");
    },
  });
  const counter = { released: 0 };
  return Object.assign(
    {
      kind: "local-build" as const,
      crossProcessLocks: true,
      binaryPath: null,
      tryLockFile: (p: string) => handle(p, counter),
      lockFile: async (p: string) => handle(p, counter),
    } as unknown as NativeFs,
    counter,
  );
}

describe("PathLockTable", () => {
  it("a lock file that cannot be removed never leaves its path locked", async () => {
    const nfs = backendWhoseUnlinkFails();
    const table = new PathLockTable(() => nfs);
    const lease = await table.acquire("/root/k/m/c.bin");
    expect(() => lease.release({ removeLockFile: true })).not.toThrow();
    expect(table.isHeld("/root/k/m/c.bin")).toBe(false);
    const again = table.tryAcquire("/root/k/m/c.bin");
    expect(again).not.toBeNull();
    again!.release();
    await expect(table.acquire("/root/k/m/c.bin", AbortSignal.timeout(1000))).resolves.toBeTruthy();
  });

  it("hands the path to waiters in the order they came, skipping one that aborted", async () => {
    const table = new PathLockTable(() => ({ crossProcessLocks: false }) as NativeFs);
    const first = await table.acquire("p");
    const order: string[] = [];
    const aborted = new AbortController();
    const b = table.acquire("p").then((l) => (order.push("b"), l));
    const c = table.acquire("p", aborted.signal).then((l) => (order.push("c"), l), () => order.push("c aborted"));
    const d = table.acquire("p").then((l) => (order.push("d"), l));
    aborted.abort();
    first.release();
    (await b).release();
    await c;
    (await d).release();
    expect(order).toEqual(["c aborted", "b", "d"]);
    expect(table.isHeld("p")).toBe(false);
  });
});
