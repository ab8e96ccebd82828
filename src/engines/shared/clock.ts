/**
 * The adapters' clock: milliseconds from a monotonic source, for durations only. Bare has no
 * `performance` global; the Bare build injects one (src/platform/bare/globals.ts).
 */
export const now = (): number => performance.now();
