/**
 * What the Bare build's node:fs and node:crypto take from kvkeep's native addon
 * (native/src/platform.cc): the open(2) flags bare-fs lacks, stat with exact 64-bit fields
 * (nanosecond times, as Node's `{ bigint: true }`), and random bytes. Under Bare the addon is
 * required: without O_NOFOLLOW/O_EXCL and nanosecond identities kvkeep's guarantees would
 * silently weaken, so a missing addon is a NATIVE_UNAVAILABLE error on first use.
 */
import { KvKeepError } from "../../errors.js";
// Not the loader (src/native/loader.ts): it imports the JS fallback, whose modules read
// fs.constants at evaluation — a cycle back into the fs shim that is still being evaluated.
import { loadBindingFrom } from "../../native/binding.js";
import { nativeCandidates } from "../../native/paths.js";
import { useMonotonicClock } from "./clock.js";

export interface PlatformConstants {
  readonly O_EXCL: number;
  readonly O_NOFOLLOW: number;
  readonly O_NONBLOCK: number;
  readonly O_NOCTTY: number;
  readonly O_CLOEXEC: number;
  readonly O_DIRECTORY: number;
  readonly O_SYNC: number;
  readonly O_DSYNC?: number;
}

/** dev, ino, mode, nlink, uid, gid, rdev, size, blksize, blocks, atimeNs, mtimeNs, ctimeNs. */
export type StatFields = readonly [string, string, string, string, string, string, string, string, string, string, string, string, string];

export interface PlatformBinding {
  readonly platformConstants: PlatformConstants;
  statNs(path: string, follow: boolean): Promise<StatFields>;
  fstatNs(fd: number): Promise<StatFields>;
  randomFill(bytes: Uint8Array): Uint8Array;
  monotonicMs(): number;
}

let binding: PlatformBinding | null = null;

/** The addon's platform exports: the first candidate binary that loads (as the loader orders them), once. */
export function platformBinding(): PlatformBinding {
  if (binding) return binding;
  const problems: string[] = [];
  for (const candidate of nativeCandidates()) {
    let raw: Partial<PlatformBinding>;
    try {
      raw = loadBindingFrom(candidate.path) as unknown as Partial<PlatformBinding>;
    } catch (error) {
      problems.push(`${candidate.path} did not load: ${(error as Error).message}`);
      continue;
    }
    if (
      typeof raw.platformConstants !== "object" ||
      typeof raw.statNs !== "function" ||
      typeof raw.fstatNs !== "function" ||
      typeof raw.randomFill !== "function" ||
      typeof raw.monotonicMs !== "function"
    ) {
      problems.push(`${candidate.path} has no platform functions (it predates Bare support)`);
      continue;
    }
    binding = raw as PlatformBinding;
    useMonotonicClock(binding.monotonicMs);
    return binding;
  }
  throw new KvKeepError(
    "NATIVE_UNAVAILABLE",
    `kvkeep under Bare needs its native addon (${problems.length ? problems.join("; ") : "no prebuilt or local build was found"}). Build it with \`npm run build:native\` in kvkeep's package directory (cmake-js, a C++17 compiler).`,
  );
}
