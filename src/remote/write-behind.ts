/**
 * The write-behind queue of remote uploads (no I/O of its own). A commit pushes a job and
 * returns at once; jobs run in the background, `concurrency` at a time, one at a time per
 * key (a cache). Bounded: a job pushed for a key already waiting replaces it (the newer
 * commit supersedes the older, which need not be uploaded at all), and when `maxPending`
 * keys are waiting the oldest waiting job is dropped. `drain()` waits for everything queued.
 */
export interface WriteBehindOptions {
  maxPending: number;
  concurrency: number;
  /** A job left the queue without running (replaced, dropped for room, or cancelled). */
  onDiscard?: ((key: string, reason: "replaced" | "full" | "cancelled") => void) | undefined;
}

export class WriteBehind<J> {
  /** Waiting jobs, oldest first (a Map keeps insertion order; a replaced job moves to the end). */
  readonly #waiting = new Map<string, J>();
  readonly #running = new Set<string>();
  readonly #run: (key: string, job: J) => Promise<void>;
  readonly #options: WriteBehindOptions;
  #idle: Array<() => void> = [];

  constructor(run: (key: string, job: J) => Promise<void>, options: WriteBehindOptions) {
    this.#run = run;
    this.#options = options;
  }

  /** Jobs waiting or running. */
  get size(): number {
    return this.#waiting.size + this.#running.size;
  }

  push(key: string, job: J): void {
    if (this.#waiting.delete(key)) this.#options.onDiscard?.(key, "replaced");
    else if (this.#waiting.size >= this.#options.maxPending) {
      const oldest = this.#waiting.keys().next().value as string;
      this.#waiting.delete(oldest);
      this.#options.onDiscard?.(oldest, "full");
    }
    this.#waiting.set(key, job);
    this.#pump();
  }

  /** Drop the waiting jobs whose key `matches` (a running one finishes). */
  cancel(matches: (key: string) => boolean): void {
    for (const key of [...this.#waiting.keys()]) {
      if (!matches(key)) continue;
      this.#waiting.delete(key);
      this.#options.onDiscard?.(key, "cancelled");
    }
    this.#settleIfIdle();
  }

  /** Resolves once nothing is waiting or running (jobs pushed meanwhile included). */
  drain(): Promise<void> {
    if (this.size === 0) return Promise.resolve();
    return new Promise((resolve) => this.#idle.push(resolve));
  }

  #pump(): void {
    while (this.#running.size < this.#options.concurrency) {
      const key = [...this.#waiting.keys()].find((k) => !this.#running.has(k));
      if (key === undefined) break;
      const job = this.#waiting.get(key)!;
      this.#waiting.delete(key);
      this.#running.add(key);
      void this.#run(key, job)
        .catch(() => {}) // the runner logs its own failures; the queue goes on
        .finally(() => {
          this.#running.delete(key);
          this.#pump();
          this.#settleIfIdle();
        });
    }
  }

  #settleIfIdle(): void {
    if (this.size > 0) return;
    const waiters = this.#idle;
    this.#idle = [];
    for (const resolve of waiters) resolve();
  }
}
