/** Where the loader looks for the addon. scripts/install.mjs and the build scripts agree on these. */
import { existsSync, readFileSync, statSync } from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";

export type NativeCandidateKind = "prebuilt" | "local-build";

export interface NativeCandidate {
  readonly kind: NativeCandidateKind;
  readonly path: string;
}

/**
 * The package root: the nearest ancestor of this module with kvkeep's package.json.
 * Walking up (rather than a fixed "../..") works from src/native (tsx, vitest) and from
 * dist/ (tsup bundles this module into a chunk at another depth).
 */
export function findPackageRoot(from: string = path.dirname(fileURLToPath(import.meta.url))): string | null {
  let dir = from;
  for (;;) {
    const manifest = path.join(dir, "package.json");
    if (existsSync(manifest)) {
      try {
        if ((JSON.parse(readFileSync(manifest, "utf8")) as { name?: unknown }).name === "kvkeep") return dir;
      } catch {
        // unreadable or not JSON: keep walking
      }
    }
    const parent = path.dirname(dir);
    if (parent === dir) return null;
    dir = parent;
  }
}

/** `prebuilds/<platform>-<arch>/kvkeep.node`, shipped in the package. */
export function prebuiltPath(root: string): string {
  return path.join(root, "prebuilds", `${process.platform}-${process.arch}`, "kvkeep.node");
}

/** cmake-js (`npm run build:native`, the install hook) and node-gyp (`npm run build:native:gyp`) outputs. */
export function localBuildPaths(root: string): string[] {
  return [path.join(root, "build-cmake", "Release", "kvkeep.node"), path.join(root, "build", "Release", "kvkeep.node")];
}

function mtimeMs(file: string): number {
  try {
    return statSync(file).mtimeMs;
  } catch {
    return -1;
  }
}

/**
 * Candidates in load order: the prebuilt binary, then the local builds that exist,
 * newest first (so the build a developer just ran wins over a stale one of the other tool).
 */
export function nativeCandidates(root: string | null = findPackageRoot()): NativeCandidate[] {
  if (root === null) return [];
  const candidates: NativeCandidate[] = [];
  const prebuilt = prebuiltPath(root);
  if (existsSync(prebuilt)) candidates.push({ kind: "prebuilt", path: prebuilt });
  const local = localBuildPaths(root)
    .map((file) => ({ file, mtime: mtimeMs(file) }))
    .filter((entry) => entry.mtime >= 0)
    .sort((a, b) => b.mtime - a.mtime);
  for (const entry of local) candidates.push({ kind: "local-build", path: entry.file });
  return candidates;
}
