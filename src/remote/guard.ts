/**
 * Every call a remote tier makes to its server goes through one guard: a deadline, the
 * circuit breaker, the counters, and a single warning per outage (and an info line when
 * the server answers again). An operation therefore always settles within its deadline
 * and never rejects for availability: it returns `{ ok: false }` and the store carries on
 * with its local tier.
 */
import { type Logger, logLine, silentLogger } from "../logger.js";
import { CircuitBreaker, DEFAULT_BREAKER, type BreakerOptions } from "./breaker.js";
import type { RemoteStats } from "./types.js";

export type GuardFailure = { ok: false; reason: "unavailable" | "timeout" | "error"; error?: unknown };
export type Guarded<T> = { ok: true; value: T } | GuardFailure;

/**
 * How an error thrown by the client counts: `reply` = the server answered (it is up);
 * `timeout` = the client's own command timeout; `unreachable` = anything else.
 */
export type ErrorClass = "reply" | "timeout" | "unreachable";

export class DeadlineError extends Error {
  constructor(readonly label: string, readonly timeoutMs: number) {
    super(`${label} took longer than ${timeoutMs} ms`);
  }
}

export interface GuardOptions {
  kind: string;
  classify: (error: unknown) => ErrorClass;
  /** A cheap round trip (PING) used to learn that an unreachable server is back. */
  probe: (signal: AbortSignal) => Promise<void>;
  probeTimeoutMs: number;
  breaker?: Partial<BreakerOptions> | undefined;
}

export class RemoteGuard {
  logger: Logger = silentLogger;
  readonly counters: Omit<RemoteStats, "breaker"> = {
    lookups: 0,
    hits: 0,
    misses: 0,
    corrupt: 0,
    timeouts: 0,
    errors: 0,
    skipped: 0,
    outages: 0,
    uploadsPublished: 0,
    uploadsSuperseded: 0,
    uploadsDeleted: 0,
    uploadsFailed: 0,
    bytesUploaded: 0,
    bytesDownloaded: 0,
    removes: 0,
  };
  readonly #breaker: CircuitBreaker;
  readonly #options: GuardOptions;
  #closed = false;
  #probe: Promise<void> | null = null;

  constructor(options: GuardOptions) {
    this.#options = options;
    this.#breaker = new CircuitBreaker({ ...DEFAULT_BREAKER, now: () => Date.now(), ...options.breaker });
  }

  get state(): "closed" | "open" {
    return this.#breaker.state;
  }

  stats(): RemoteStats {
    return { breaker: this.#breaker.state, ...this.counters };
  }

  /**
   * Run one server operation under `timeoutMs`. The signal aborts when the deadline passes,
   * so the client can drop the command; the result settles at the deadline regardless.
   */
  async run<T>(label: string, timeoutMs: number, op: (signal: AbortSignal) => Promise<T>): Promise<Guarded<T>> {
    const admission = this.#closed ? "skip" : this.#breaker.admit();
    if (admission !== "run") {
      this.counters.skipped += 1;
      if (admission === "probe") this.#startProbe();
      return { ok: false, reason: "unavailable" };
    }
    const attempt = await withDeadline(label, timeoutMs, op);
    if (attempt.ok) {
      this.#breaker.succeeded();
      return attempt;
    }
    const error = attempt.error;
    const errorClass = error instanceof DeadlineError ? "timeout" : this.#options.classify(error);
    if (errorClass === "timeout") {
      this.counters.timeouts += 1;
      this.#noteUnreachable(label, error);
      return { ok: false, reason: "timeout", error };
    }
    this.counters.errors += 1;
    if (errorClass === "reply") {
      this.#breaker.succeeded();
      return { ok: false, reason: "error", error };
    }
    this.#noteUnreachable(label, error);
    return { ok: false, reason: "unavailable", error };
  }

  /** Stop running operations (each resolves unavailable) and wait for a running probe. */
  async close(): Promise<void> {
    this.#closed = true;
    await this.#probe;
  }

  #noteUnreachable(label: string, error: unknown): void {
    if (!this.#breaker.failed()) return;
    this.counters.outages += 1;
    this.logger.warn(
      logLine(`remote ${this.#options.kind} tier unreachable; turns use the local tier only until it answers again`, {
        operation: label,
        error,
      }),
    );
  }

  #startProbe(): void {
    const { probe, probeTimeoutMs, kind } = this.#options;
    this.#probe = (async () => {
      const attempt = await withDeadline("probe", probeTimeoutMs, probe);
      if (this.#breaker.probeDone(attempt.ok)) {
        this.logger.info(logLine(`remote ${kind} tier reachable again; using it`));
      }
    })().finally(() => {
      this.#probe = null;
    });
  }
}

/** Run `op` with an AbortSignal that fires at the deadline; settle by then whatever `op` does. */
export async function withDeadline<T>(
  label: string,
  timeoutMs: number,
  op: (signal: AbortSignal) => Promise<T>,
): Promise<{ ok: true; value: T } | { ok: false; error: unknown }> {
  const controller = new AbortController();
  let timer: NodeJS.Timeout | undefined;
  const deadline = new Promise<never>((_, reject) => {
    timer = setTimeout(() => {
      const error = new DeadlineError(label, timeoutMs);
      controller.abort(error);
      reject(error);
    }, timeoutMs);
  });
  try {
    const running = op(controller.signal);
    running.catch(() => {}); // settled after the deadline: nobody is listening any more
    return { ok: true, value: await Promise.race([running, deadline]) };
  } catch (error) {
    return { ok: false, error };
  } finally {
    clearTimeout(timer);
  }
}
