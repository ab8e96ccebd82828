/**
 * Named instants inside the commit protocol where the crash tests kill the process.
 * In production `KVKEEP_TEST_CRASH_AT` is unset and `crashPoint` is one comparison.
 * With `KVKEEP_TEST_CRASH_AT=<step>[@<n>]` (only in test child processes) the process
 * SIGKILLs itself the n-th time (default: first) it reaches that step — how every step
 * of a commit is proven crash-safe, not only random instants. In production each step
 * costs one awaited no-op.
 */
export const CRASH_POINTS = [
  /** The new state is fsynced and hashed; nothing on disk has changed yet. */
  "install:after-fsync-state",
  /** A small file's temp (a manifest) is written and fsynced, not yet renamed into place. */
  "atomic-write:after-temp-synced",
  /** A small file (a manifest) was renamed into place; its directory is not fsynced yet. */
  "atomic-write:after-rename",
  /** The manifest {current: previous, pending: new} is durable. */
  "install:after-pending-manifest",
  /** The new state was renamed over the cache file; the directory is not fsynced yet. */
  "install:after-rename",
  /** ...and the directory is fsynced: the new state is the durable cache file. */
  "install:after-rename-synced",
  /** The manifest describes only the new state (and, for a fresh target, is durable). */
  "install:after-final-manifest",
  "auto:after-target-installed",
  "auto:after-source-removed",
] as const;

/**
 * Remote tier uploads (src/remote/redis): a token chunk stored (token-chunks.ts); a piece of the
 * state's bytes acknowledged (upload.ts); every piece sent, before publishing.
 */
export const REMOTE_CRASH_POINTS = ["remote:after-token-chunk", "remote:after-chunk", "remote:before-publish"] as const;

/** Chunk files (src/chunkfiles/chunk-files.ts): a chunk's temp is written and fsynced; renamed to its name, its directory not fsynced yet. */
export const CHUNK_CRASH_POINTS = ["chunk:after-temp-synced", "chunk:after-rename"] as const;

/**
 * A chunked commit (src/session/chunk-commit.ts): every chunk the state names is on the disk
 * (written or touched), no tail yet; the tail's temp is written beside the cache, before the
 * two-slot install.
 */
export const CHUNKED_COMMIT_CRASH_POINTS = ["chunked:after-chunks-stored", "chunked:after-tail-temp"] as const;

export type CrashPoint = (typeof CRASH_POINTS)[number] | (typeof REMOTE_CRASH_POINTS)[number] | (typeof CHUNK_CRASH_POINTS)[number]
  | (typeof CHUNKED_COMMIT_CRASH_POINTS)[number];

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
 * exactly there — e.g. a delete between a commit's rename and its manifest, or a fault:
 * an error the hook throws is raised at that step as if the operation that follows it
 * had failed (how ENOSPC and EIO are injected after every step). Null removes it.
 */
export function setCrashPointHookForTest(hook: ((step: CrashPoint) => Promise<void> | void) | null): void {
  pauseHook = hook;
}
