/**
 * A circuit breaker for the remote tier (pure: the clock is injected). Closed, operations
 * run. After `failuresToOpen` consecutive failures (timeouts, refused connections) it
 * opens: operations are skipped at once, so a down or slow server costs a turn nothing.
 * Once the cooldown has passed, the next operation asks for one probe (the tier pings in
 * the background, still skipping the operation); a successful probe closes the breaker, a
 * failed one keeps it open with the cooldown doubled, up to `maxCooldownMs`.
 */
export interface BreakerOptions {
  failuresToOpen: number;
  baseCooldownMs: number;
  maxCooldownMs: number;
  now: () => number;
}

export const DEFAULT_BREAKER: Omit<BreakerOptions, "now"> = {
  failuresToOpen: 2,
  baseCooldownMs: 500,
  maxCooldownMs: 5_000,
};

export class CircuitBreaker {
  #state: "closed" | "open" = "closed";
  #failures = 0;
  #cooldownMs: number;
  #openUntil = 0;
  #probing = false;
  readonly #options: BreakerOptions;

  constructor(options: BreakerOptions) {
    this.#options = options;
    this.#cooldownMs = options.baseCooldownMs;
  }

  get state(): "closed" | "open" {
    return this.#state;
  }

  /**
   * What to do with an operation now: `run` it; `skip` it (open); or `probe`: skip it, but
   * start one probe of the server — the caller must report it with `probeDone`.
   */
  admit(): "run" | "skip" | "probe" {
    if (this.#state === "closed") return "run";
    if (this.#probing || this.#options.now() < this.#openUntil) return "skip";
    this.#probing = true;
    return "probe";
  }

  /** An operation reached the server (whatever it answered). */
  succeeded(): void {
    this.#failures = 0;
  }

  /** An operation could not reach the server in time. True when this opened the breaker. */
  failed(): boolean {
    if (this.#state === "open") return false;
    this.#failures += 1;
    if (this.#failures < this.#options.failuresToOpen) return false;
    this.#state = "open";
    this.#cooldownMs = this.#options.baseCooldownMs;
    this.#openUntil = this.#options.now() + this.#cooldownMs;
    return true;
  }

  /** The probe's result. True when this closed the breaker (the server is back). */
  probeDone(ok: boolean): boolean {
    this.#probing = false;
    if (this.#state === "closed") return false;
    if (ok) {
      this.#state = "closed";
      this.#failures = 0;
      return true;
    }
    this.#cooldownMs = Math.min(this.#cooldownMs * 2, this.#options.maxCooldownMs);
    this.#openUntil = this.#options.now() + this.#cooldownMs;
    return false;
  }
}
