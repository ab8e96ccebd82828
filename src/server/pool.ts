/**
 * A fixed set of engine slots handed out one request at a time, with a bounded FIFO of
 * waiters. Pure (no I/O, no timers): the server maps its errors to 429 and aborts.
 */

/** All slots are busy and the wait queue is full. */
export class QueueFullError extends Error {
  override readonly name = "QueueFullError";
}

/** The waiter's signal aborted before a slot was free; it gave its place up. */
export class QueueAbortedError extends Error {
  override readonly name = "QueueAbortedError";
}

export interface SlotLease<T> {
  readonly slot: T;
  /** Give the slot back (to the next waiter, if any). Idempotent. */
  release(): void;
}

interface Waiter<T> {
  resolve(lease: SlotLease<T>): void;
  reject(error: Error): void;
  cleanup(): void;
}

export class SlotPool<T> {
  readonly #free: T[];
  readonly #waiters: Waiter<T>[] = [];
  readonly #maxQueue: number;
  readonly #onQueueDepth: (depth: number) => void;

  constructor(slots: readonly T[], maxQueue: number, onQueueDepth: (depth: number) => void = () => {}) {
    if (slots.length === 0) throw new RangeError("a slot pool needs at least one slot");
    this.#free = [...slots];
    this.#maxQueue = maxQueue;
    this.#onQueueDepth = onQueueDepth;
  }

  /** Requests waiting for a slot. */
  get queueDepth(): number {
    return this.#waiters.length;
  }

  /**
   * A free slot now, else a place in the queue. Rejects with `QueueFullError` when the
   * queue is full, and with `QueueAbortedError` when `signal` aborts while waiting.
   */
  acquire(signal?: AbortSignal): Promise<SlotLease<T>> {
    if (signal?.aborted) return Promise.reject(new QueueAbortedError("the request was aborted before it got a slot"));
    const slot = this.#free.shift();
    if (slot !== undefined) return Promise.resolve(this.#lease(slot));
    if (this.#waiters.length >= this.#maxQueue) return Promise.reject(new QueueFullError("every sequence is busy and the wait queue is full"));
    return new Promise((resolve, reject) => {
      const onAbort = (): void => {
        const i = this.#waiters.indexOf(waiter);
        if (i < 0) return;
        this.#waiters.splice(i, 1);
        this.#onQueueDepth(this.#waiters.length);
        reject(new QueueAbortedError("the request was aborted while it waited for a slot"));
      };
      const waiter: Waiter<T> = { resolve, reject, cleanup: () => signal?.removeEventListener("abort", onAbort) };
      signal?.addEventListener("abort", onAbort, { once: true });
      this.#waiters.push(waiter);
      this.#onQueueDepth(this.#waiters.length);
    });
  }

  #lease(slot: T): SlotLease<T> {
    let released = false;
    return {
      slot,
      release: () => {
        if (released) return;
        released = true;
        const next = this.#waiters.shift();
        if (!next) {
          this.#free.push(slot);
          return;
        }
        next.cleanup();
        this.#onQueueDepth(this.#waiters.length);
        next.resolve(this.#lease(slot));
      },
    };
  }
}

/**
 * Seconds a client told 429 should wait: the queue ahead of it drained `parallel` at a time
 * at the recent turn duration, at least 1 s and at most 60 s.
 */
export function retryAfterSeconds(queueDepth: number, parallel: number, recentTurnMs: number): number {
  const ms = ((queueDepth + 1) / Math.max(1, parallel)) * Math.max(0, recentTurnMs);
  return Math.min(60, Math.max(1, Math.ceil(ms / 1000)));
}
