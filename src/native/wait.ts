/**
 * The async wait for a lock, shared by both backends.
 *
 * Why polling instead of a blocking flock() on a worker thread: a blocked flock occupies
 * one of libuv's four threadpool threads for as long as the holder keeps the lock (a few
 * waiters would stall every fs call and hash in the process), and a thread parked in
 * flock cannot be woken when the caller's AbortSignal fires. A non-blocking attempt from
 * the event loop every 1 ms → 2 → 4 … capped at 25 ms costs nothing measurable, reacts
 * to an abort at once, and picks up a lock freed by a dead process within ~25 ms.
 * Releases inside this process wake the waiters on that path immediately.
 */
import { KvKeepError } from "../errors.js";

const MIN_DELAY_MS = 1;
const MAX_DELAY_MS = 25;

export interface LockAttempt {
  /** One non-blocking attempt; true when acquired. May throw (an I/O error ends the wait). */
  tryAcquire(): boolean;
  /** Called when the wait ends without acquiring (abort or error): free what the attempt holds. */
  abandon(): void;
}

/** Per-path wake-ups for in-process releases. */
export class LockWakeups {
  readonly #waiters = new Map<string, Set<() => void>>();

  add(path: string, wake: () => void): void {
    let set = this.#waiters.get(path);
    if (!set) {
      set = new Set();
      this.#waiters.set(path, set);
    }
    set.add(wake);
  }

  delete(path: string, wake: () => void): void {
    const set = this.#waiters.get(path);
    if (!set) return;
    set.delete(wake);
    if (set.size === 0) this.#waiters.delete(path);
  }

  /** Called after a release: the waiters retry on the next turn of the event loop (not synchronously, so the releaser's own next step runs first). */
  notify(path: string): void {
    const set = this.#waiters.get(path);
    if (!set) return;
    for (const wake of [...set]) wake();
  }
}

/**
 * Resolves once `attempt.tryAcquire()` succeeds. The caller has already made the first
 * attempt (and checked `signal.aborted`) synchronously. Rejects with ABORTED when the
 * signal aborts, or with whatever an attempt throws; in both cases `abandon()` runs first.
 */
export function waitForLock(
  attempt: LockAttempt,
  path: string,
  wakeups: LockWakeups,
  signal: AbortSignal | undefined,
  what: string,
  mapError: (error: unknown) => unknown,
): Promise<void> {
  return new Promise<void>((resolve, reject) => {
    let delay = MIN_DELAY_MS;
    let timer: NodeJS.Timeout | undefined;
    let settled = false;

    const finish = (): void => {
      settled = true;
      if (timer !== undefined) clearTimeout(timer);
      timer = undefined;
      wakeups.delete(path, wake);
      signal?.removeEventListener("abort", onAbort);
    };

    const poll = (): void => {
      timer = undefined;
      if (settled) return;
      let acquired: boolean;
      try {
        acquired = attempt.tryAcquire();
      } catch (error) {
        finish();
        attempt.abandon();
        reject(mapError(error));
        return;
      }
      if (acquired) {
        finish();
        resolve();
        return;
      }
      timer = setTimeout(poll, delay);
      delay = Math.min(delay * 2, MAX_DELAY_MS);
    };

    function wake(): void {
      if (settled) return;
      if (timer !== undefined) clearTimeout(timer);
      delay = MIN_DELAY_MS;
      timer = setTimeout(poll, 0);
    }

    function onAbort(): void {
      if (settled) return;
      finish();
      attempt.abandon();
      reject(
        new KvKeepError("ABORTED", `${what} was aborted while waiting; the lock was not taken.`, {
          cause: signal?.reason,
        }),
      );
    }

    signal?.addEventListener("abort", onAbort, { once: true });
    wakeups.add(path, wake);
    timer = setTimeout(poll, delay);
    delay *= 2;
  });
}
