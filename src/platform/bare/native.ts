/**
 * What the Bare build's node:fs and node:crypto take from kvkeep's native addon
 * (native/src/platform.cc): the open(2) flags bare-fs lacks, stat with exact 64-bit fields
 * (nanosecond times, as Node's `{ bigint: true }`), and random bytes. Under Bare the addon is
 * required: without O_NOFOLLOW/O_EXCL and nanosecond identities kvkeep's guarantees would
 * silently weaken, so a missing addon is a NATIVE_UNAVAILABLE error on first use.
 */
import { KvKeepError } from "../../errors.js";
import { openNativeBackend } from "../../native/loader.js";
import { useMonotonicClock } from "./clock.js";

export interface PlatformConstants {
  readonly O_EXCL: number;
  readonly O_NOFOLLOW: number;
  readonly O_NONBLOCK: number;
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

/** The addon's platform exports (loaded once). */
export function platformBinding(): PlatformBinding {
  if (binding) return binding;
  const { binding: raw, fs } = openNativeBackend();
  const candidate = raw as unknown as Partial<PlatformBinding>;
  if (
    typeof candidate.platformConstants !== "object" ||
    typeof candidate.statNs !== "function" ||
    typeof candidate.fstatNs !== "function" ||
    typeof candidate.randomFill !== "function" ||
    typeof candidate.monotonicMs !== "function"
  ) {
    throw new KvKeepError(
      "NATIVE_UNAVAILABLE",
      `kvkeep's native addon at ${fs.binaryPath ?? "?"} has no platform functions (it predates Bare support); rebuild it with \`npm run build:native\`.`,
    );
  }
  binding = candidate as PlatformBinding;
  useMonotonicClock(binding.monotonicMs);
  return binding;
}
