/**
 * Named instants inside the commit protocol where the crash tests kill the process.
 * In production `KVKEEP_TEST_CRASH_AT` is unset and `crashPoint` is one comparison.
 * With `KVKEEP_TEST_CRASH_AT=<step>[@<n>]` (only in test child processes) the process
 * SIGKILLs itself the n-th time (default: first) it reaches that step — how every step
 * of a commit is proven crash-safe, not only random instants. In production each step
 * costs one awaited no-op.
 */
export const CRASH_POINTS = [
  "install:after-fsync-state",
  "install:after-pending-manifest",
  "install:after-rename",
  "install:after-final-manifest",
  "auto:after-target-installed",
  "auto:after-source-removed",
] as const;

/** Remote tier uploads (src/remote/redis/tier.ts): a chunk acknowledged; every chunk sent, before publishing. */
export const REMOTE_CRASH_POINTS = ["remote:after-chunk", "remote:before-publish"] as const;

export type CrashPoint = (typeof CRASH_POINTS)[number] | (typeof REMOTE_CRASH_POINTS)[number];

const [crashStep, crashNth] = (process.env.KVKEEP_TEST_CRASH_AT ?? "").split("@");
let hits = 0;

let pauseHook: ((step: CrashPoint) => Promise<void> | void) | null = null;

export async function crashPoint(step: CrashPoint): Promise<void> {
  if (pauseHook) await pauseHook(step);
  if (step !== crashStep) return;
  hits++;
  if (hits >= Number(crashNth ?? 1)) process.kill(process.pid, "SIGKILL");
}

/**
 * Tests only: run `hook` (and wait for it) at every step, to make something happen
 * exactly there — e.g. a delete between a commit's rename and its manifest. Null removes it.
 */
export function setCrashPointHookForTest(hook: ((step: CrashPoint) => Promise<void> | void) | null): void {
  pauseHook = hook;
}
