/**
 * An adapter's serial queue: one engine context runs one call at a time, so completions and
 * preloads wait their turn in call order. A failed call does not stop the ones behind it.
 */
import { KvKeepError } from "../../errors.js";

export class SerialQueue {
  #tail: Promise<unknown> = Promise.resolve();
  #closed = false;

  /** Run `work` after everything queued before it; rejects with STORE_CLOSED once closed. */
  run<T>(work: () => Promise<T>): Promise<T> {
    if (this.#closed) return Promise.reject(new KvKeepError("STORE_CLOSED", "this completion adapter was disposed."));
    const run = this.#tail.then(work);
    this.#tail = run.catch(() => {});
    return run;
  }

  /** Refuse further work; resolves when the work queued so far has ended. */
  async close(): Promise<void> {
    this.#closed = true;
    await this.#tail;
  }
}
