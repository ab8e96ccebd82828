/**
 * Locks on cache files: a FIFO queue per path inside this process, then (with the native
 * addon) an OS file lock that excludes other processes and dies with its holder.
 *
 * The table is process-wide, not per store, because two stores on one root in one process
 * must exclude each other as two processes do. Order of acquisition: in-process grant
 * first, OS lock second — so at most one waiter per path per process polls the OS lock,
 * and flock never has to arbitrate between two handles of the same process.
 */
import path from "node:path";
import { abortedError } from "../errors.js";
import { lockPathOf } from "../layout/paths.js";
import { type LockHandle, loadNativeFs, type NativeFs } from "../native/index.js";

export interface Lease {
  readonly path: string;
  /**
   * Give the lock up. `removeLockFile` unlinks the lock file first (only when nobody in
   * this process waits for it), so a cache that was removed leaves an empty directory.
   * Never throws: a lock file that cannot be removed is left behind.
   */
  release(options?: { removeLockFile?: boolean }): void;
}

/**
 * The cache root of a cache path (`<root>/<key>/<model>/<hash>.bin`): the lock file is
 * opened below it without following a symlink at any level.
 */
function rootOf(cachePath: string): string {
  return path.dirname(path.dirname(path.dirname(path.resolve(cachePath))));
}

interface Waiter {
  grant: () => void;
}

interface Entry {
  queue: Waiter[];
}

export class PathLockTable {
  /** Present while the path is granted to someone in this process. */
  readonly #entries = new Map<string, Entry>();

  constructor(private readonly nativeFs: () => NativeFs) {}

  isHeld(cachePath: string): boolean {
    return this.#entries.has(cachePath);
  }

  /** Wait in line for the cache at `cachePath`. Rejects with ABORTED when `signal` aborts while waiting. */
  async acquire(cachePath: string, signal?: AbortSignal): Promise<Lease> {
    if (signal?.aborted) throw abortedError("waiting for the cache file", signal);
    const entry = this.#entries.get(cachePath);
    if (!entry) {
      this.#entries.set(cachePath, { queue: [] });
    } else {
      await new Promise<void>((resolve, reject) => {
        const onAbort = (): void => {
          const index = entry.queue.indexOf(waiter);
          if (index >= 0) entry.queue.splice(index, 1);
          reject(abortedError("waiting for the cache file", signal));
        };
        const waiter: Waiter = {
          grant: () => {
            signal?.removeEventListener("abort", onAbort);
            resolve();
          },
        };
        entry.queue.push(waiter);
        signal?.addEventListener("abort", onAbort, { once: true });
      });
    }
    // Granted in this process; now exclude other processes.
    const fsBackend = this.nativeFs();
    let osLock: LockHandle | null = null;
    if (fsBackend.crossProcessLocks) {
      try {
        osLock = await fsBackend.lockFile(lockPathOf(cachePath), "exclusive", { signal, under: rootOf(cachePath) });
      } catch (error) {
        this.#handOff(cachePath);
        throw error;
      }
    }
    return this.#lease(cachePath, osLock);
  }

  /** Take the lock only if nobody (in this or another process) holds it; never waits. */
  tryAcquire(cachePath: string): Lease | null {
    if (this.#entries.has(cachePath)) return null;
    const fsBackend = this.nativeFs();
    let osLock: LockHandle | null = null;
    if (fsBackend.crossProcessLocks) {
      osLock = fsBackend.tryLockFile(lockPathOf(cachePath), "exclusive", { under: rootOf(cachePath) });
      if (!osLock) return null;
    }
    this.#entries.set(cachePath, { queue: [] });
    return this.#lease(cachePath, osLock);
  }

  #lease(cachePath: string, osLock: LockHandle | null): Lease {
    let released = false;
    return {
      path: cachePath,
      release: (options) => {
        if (released) return;
        released = true;
        const waiting = (this.#entries.get(cachePath)?.queue.length ?? 0) > 0;
        try {
          if (osLock) {
            if (options?.removeLockFile && !waiting) osLock.unlinkAndRelease();
            else osLock.release();
          }
        } catch {
          // The unlink failed (the fd is closed either way). A stray lock file only keeps
          // its directory from being pruned; it must never keep the path locked.
          osLock?.release();
        } finally {
          this.#handOff(cachePath);
        }
      },
    };
  }

  #handOff(cachePath: string): void {
    const entry = this.#entries.get(cachePath);
    if (!entry) return;
    const next = entry.queue.shift();
    if (next) next.grant();
    else this.#entries.delete(cachePath);
  }
}

let table: PathLockTable | null = null;

/** The process-wide table: two stores on one root in one process exclude each other like two processes. */
export function processLocks(): PathLockTable {
  table ??= new PathLockTable(() => loadNativeFs());
  return table;
}
