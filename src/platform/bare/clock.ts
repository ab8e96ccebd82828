/**
 * The Bare build's `performance.now()`. The monotonic clock comes from the native addon, which
 * registers it when loaded (./native.ts); until then (nothing timed yet) `Date.now`. This
 * module imports nothing: it is injected as a global, and anything it imported would be
 * evaluated before the injected globals exist.
 */
let clock: () => number = Date.now;

export function useMonotonicClock(monotonicMs: () => number): void {
  clock = monotonicMs;
}

export const performance = {
  now(): number {
    return clock();
  },
};
