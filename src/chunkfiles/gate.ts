/**
 * The chunk gate of a root: a reader/writer lock that commits hold SHARED (from their first
 * chunk existence check to their manifest install) and chunk GC holds EXCLUSIVE (to note its
 * start time t0, and while it deletes). ARCHITECTURE.md, "Subsystems": chunk GC argues why this is enough for GC never
 * to delete a chunk a commit is about to name.
 *
 * Two parts, taken in this order and released in the reverse:
 * - in this process, a FIFO reader/writer gate per root (process-wide, like the cache locks:
 *   two stores on one root in one process exclude each other as two processes do, and flock
 *   is never asked to arbitrate between handles of one process — the JS fallback has none);
 * - across processes, the native flock on `<root>/.kvkeep/chunks.lock` in the same mode
 *   (none in the JS fallback, which is single-process by contract).
 *
 * FIFO: a collector waiting behind readers holds back readers that come after it, so a
 * stream of commits in this process cannot starve GC. Across processes flock has no order, so
 * a turnstile does it: a collector takes `<root>/.kvkeep/chunks-gc.lock` EXCLUSIVE before the
 * gate (and lets go once it has the gate), and a commit passes the turnstile (takes it SHARED
 * and releases it at once) before taking the gate. While a collector waits, new commits wait
 * at the turnstile and the ones in flight drain: the collector gets in after them, however
 * busy other processes are. (Measured: without it, two processes committing back to back
 * kept a collector out for seconds.)
 */
import path from "node:path";
import { abortedError } from "../errors.js";
import type { LockHandle, NativeFs } from "../native/index.js";
import type { LockMode } from "../native/types.js";
import { chunkGateLockPath, chunkTurnstileLockPath } from "./paths.js";

interface Waiter {
  readonly mode: LockMode;
  grant(): void;
}

/** An in-process FIFO reader/writer gate. */
export class ReadWriteGate {
  #readers = 0;
  #writer = false;
  readonly #queue: Waiter[] = [];

  /** Resolves once granted in `mode`; the function it resolves releases (idempotent). */
  async acquire(mode: LockMode, signal?: AbortSignal): Promise<() => void> {
    if (signal?.aborted) throw abortedError("waiting for the chunk gate", signal);
    if (this.#queue.length === 0 && this.#compatible(mode)) {
      this.#take(mode);
    } else {
      await new Promise<void>((resolve, reject) => {
        const onAbort = (): void => {
          const index = this.#queue.indexOf(waiter);
          if (index >= 0) this.#queue.splice(index, 1);
          reject(abortedError("waiting for the chunk gate", signal));
          // A collector leaving the head may let readers behind it in.
          this.#grantWaiting();
        };
        const waiter: Waiter = {
          mode,
          grant: () => {
            signal?.removeEventListener("abort", onAbort);
            resolve();
          },
        };
        this.#queue.push(waiter);
        signal?.addEventListener("abort", onAbort, { once: true });
      });
    }
    let released = false;
    return () => {
      if (released) return;
      released = true;
      if (mode === "exclusive") this.#writer = false;
      else this.#readers--;
      this.#grantWaiting();
    };
  }

  /** Holders now (tests). */
  get holders(): { readers: number; writer: boolean; waiting: number } {
    return { readers: this.#readers, writer: this.#writer, waiting: this.#queue.length };
  }

  #compatible(mode: LockMode): boolean {
    return mode === "shared" ? !this.#writer : !this.#writer && this.#readers === 0;
  }

  #take(mode: LockMode): void {
    if (mode === "exclusive") this.#writer = true;
    else this.#readers++;
  }

  #grantWaiting(): void {
    while (this.#queue.length > 0 && this.#compatible(this.#queue[0]!.mode)) {
      const next = this.#queue.shift()!;
      this.#take(next.mode);
      next.grant();
    }
  }
}

const gates = new Map<string, ReadWriteGate>();

/** The process-wide in-process gate of a root. */
function gateOf(root: string): ReadWriteGate {
  const key = path.resolve(root);
  let gate = gates.get(key);
  if (!gate) {
    gate = new ReadWriteGate();
    gates.set(key, gate);
  }
  return gate;
}

/** Hold the root's chunk gate in `mode` while `use` runs: the in-process gate, then (past the turnstile) the flock. */
export async function withChunkGate<T>(root: string, fsBackend: NativeFs, mode: LockMode, use: () => Promise<T>, signal?: AbortSignal): Promise<T> {
  const release = await gateOf(root).acquire(mode, signal);
  let osLock: LockHandle | null = null;
  try {
    if (fsBackend.crossProcessLocks) {
      const turnstile = await fsBackend.lockFile(chunkTurnstileLockPath(root), mode, { signal, under: root });
      try {
        osLock = await fsBackend.lockFile(chunkGateLockPath(root), mode, { signal, under: root });
      } finally {
        turnstile.release();
      }
    }
    return await use();
  } finally {
    osLock?.release();
    release();
  }
}

/** @internal tests: the in-process gate of a root. */
export function chunkGateForTest(root: string): ReadWriteGate {
  return gateOf(root);
}
