/** Choosing a backend: prebuilt addon → local build → pure-JS fallback. */
import { KvKeepError } from "../errors.js";
import { type NativeBinding, loadBindingFrom } from "./binding.js";
import { createJsFallbackFs } from "./fallback.js";
import { createNativeFs } from "./native-fs.js";
import { findPackageRoot, localBuildPaths, type NativeCandidate, nativeCandidates, prebuiltPath } from "./paths.js";
import type { NativeFs } from "./types.js";

/** `KVKEEP_NO_NATIVE=1` (or `true`) forces the fallback. */
export function nativeDisabledByEnv(env: NodeJS.ProcessEnv = process.env): boolean {
  const value = env.KVKEEP_NO_NATIVE?.trim().toLowerCase();
  return value === "1" || value === "true";
}

export interface Selection {
  readonly fs: NativeFs;
  /** The raw addon, when a native backend was chosen (tests use its extra knobs). */
  readonly binding: NativeBinding | null;
  /** Why no native backend was chosen, or why candidates were skipped before one loaded. */
  readonly problems: readonly string[];
}

function tryCandidates(candidates: readonly NativeCandidate[]): { fs: NativeFs; binding: NativeBinding; problems: string[] } | { problems: string[] } {
  const problems: string[] = [];
  for (const candidate of candidates) {
    try {
      const binding = loadBindingFrom(candidate.path);
      return { fs: createNativeFs(binding, candidate.kind, candidate.path), binding, problems };
    } catch (error) {
      problems.push(`${candidate.path} did not load: ${error instanceof Error ? error.message : String(error)}`);
    }
  }
  return { problems };
}

/** The native backend or a NATIVE_UNAVAILABLE error saying what was tried. Ignores KVKEEP_NO_NATIVE. */
export function openNativeBackend(): Selection & { binding: NativeBinding } {
  const root = findPackageRoot();
  const result = tryCandidates(nativeCandidates(root));
  if ("fs" in result) return result;
  const looked =
    root === null
      ? "the kvkeep package root was not found"
      : `looked for ${[prebuiltPath(root), ...localBuildPaths(root)].join(", ")}`;
  throw new KvKeepError(
    "NATIVE_UNAVAILABLE",
    `kvkeep's native addon is not available (${[looked, ...result.problems].join("; ")}). Build it with \`npm run build:native\` (cmake-js) or \`npm run build:native:gyp\` (node-gyp).`,
  );
}

/** True under the Bare runtime (kvkeep's Bare build), where the addon is required. */
export function runningOnBare(): boolean {
  return typeof (globalThis as { Bare?: unknown }).Bare === "object";
}

/**
 * The full choice, as loadNativeFs makes it. Under Bare, KVKEEP_NO_NATIVE is refused
 * (NATIVE_UNAVAILABLE): the addon is what gives Bare its cross-process locks, and running
 * without them silently would let two processes on one root corrupt each other's turns.
 */
export function selectBackend(env: NodeJS.ProcessEnv = process.env, onBare: boolean = runningOnBare()): Selection {
  if (nativeDisabledByEnv(env)) {
    if (onBare) {
      throw new KvKeepError(
        "NATIVE_UNAVAILABLE",
        "KVKEEP_NO_NATIVE is set, but under Bare kvkeep needs its native addon: it supplies the cross-process locks (and the O_NOFOLLOW/O_EXCL opens and nanosecond file identities bare-fs lacks). Unset KVKEEP_NO_NATIVE; there is no pure-JS fallback under Bare.",
      );
    }
    return { fs: createJsFallbackFs(), binding: null, problems: ["KVKEEP_NO_NATIVE is set"] };
  }
  const root = findPackageRoot();
  const candidates = nativeCandidates(root);
  const result = tryCandidates(candidates);
  if ("fs" in result) return result;
  const problems =
    candidates.length === 0
      ? [root === null ? "the kvkeep package root was not found" : `no addon binary was found (no prebuilt for ${process.platform}-${process.arch}, no local build)`]
      : result.problems;
  return { fs: createJsFallbackFs(), binding: null, problems };
}
