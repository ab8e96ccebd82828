/**
 * kvkeep's file-system primitives — locks, fsync, no-replace rename, page-cache hints,
 * XXH64 of files — behind one typed interface, from the native addon when it loads and
 * from a pure-JS fallback otherwise. Every other module gets them through loadNativeFs().
 */
import path from "node:path";
import { useNativeXxh64 } from "../keys/hash.js";
import { type Logger, logLine, silentLogger } from "../logger.js";
import { nativeDisabledByEnv, selectBackend, type Selection } from "./loader.js";
import { findPackageRoot } from "./paths.js";
import type { NativeFs } from "./types.js";

/**
 * The command that builds the addon for kvkeep at `root`, as typed in `cwd` (pure). In a
 * checkout (kvkeep's own dev dependencies are there): `npm run build:native`. In an app's
 * node_modules: the build tools first, then kvkeep's install script run directly with
 * `--build` — `npm rebuild kvkeep` does not build there: without cmake-js and node-addon-api
 * in the app it only prints a notice, and npm 11 skips dependencies' install scripts unless
 * they were approved (`npm install-scripts approve`), while still reporting success.
 */
export function addonBuildCommand(root: string | null, cwd: string): string {
  if (root === null) return "reinstall kvkeep, then build its addon (see kvkeep's README, \"Install\")";
  const relative = path.relative(cwd, root);
  const where = relative === "" ? "." : relative.startsWith("..") || path.isAbsolute(relative) ? root : relative;
  if (!root.split(path.sep).includes("node_modules")) return where === "." ? "npm run build:native" : `cd ${where} && npm run build:native`;
  return `npm install --save-dev cmake-js node-addon-api && node ${path.join(where, "scripts", "install.mjs")} --build`;
}

export type { EntryIdentity, EntryType, LockHandle, LockOptions, MemoryFile, NativeBackendKind, NativeFs } from "./types.js";
export { withMemoryFile } from "./memory-file.js";

let selection: Selection | undefined;
let reported = false;

/** What the fallback lacks, and how to get it — said once, through the first logger given. */
function fallbackWarning(problems: readonly string[]): string {
  return logLine(
    "native addon unavailable, using the pure-JS fallback: every single-process guarantee holds, but locks only exclude holders inside this process",
    {
      reason: problems.join("; "),
      lacking:
        "cross-process locking: two processes (or an app and the kvkeep CLI) sharing one cache root can run turns on the same cache file at once, one can commit over a target the other just committed, and retention can evict a cache another process is using",
      fix: `build the addon: ${addonBuildCommand(findPackageRoot(), process.cwd())} (needs cmake and a C++17 compiler), or give each process its own cache root`,
    },
  );
}

/** The code of the process warning below: stable, so users can filter it (`node --disable-warning=KVKEEP_NATIVE_FALLBACK`). */
export const FALLBACK_WARNING_CODE = "KVKEEP_NATIVE_FALLBACK";

let warned = false;

/**
 * Once per process, on stderr through Node's warning channel — loggers are silent by
 * default, and losing cross-process locks must not go unnoticed. Not when the fallback
 * was chosen with KVKEEP_NO_NATIVE.
 */
function emitFallbackWarning(problems: readonly string[]): void {
  if (warned) return;
  warned = true;
  const text = `kvkeep's native addon is not available for ${process.platform}-${process.arch} (${problems.join("; ")}), so kvkeep uses its pure-JS fallback: locks do not exclude other processes sharing the cache root. Build the addon with \`${addonBuildCommand(findPackageRoot(), process.cwd())}\` (needs cmake and a C++17 compiler), or set KVKEEP_NO_NATIVE=1 to choose the fallback without this warning.`;
  // Bare's process (src/platform/bare/globals.ts) has no warning channel: stderr then.
  if (typeof process.emitWarning === "function") process.emitWarning(text, { type: "KvKeepWarning", code: FALLBACK_WARNING_CODE });
  else console.warn(`[${FALLBACK_WARNING_CODE}] ${text}`);
}

/**
 * Load once (memoised): prebuilt binary `prebuilds/<platform>-<arch>/kvkeep.node` shipped
 * in the package, then a local build (`build-cmake/Release` from cmake-js,
 * `build/Release` from node-gyp; the newer first), then the JS fallback.
 * `KVKEEP_NO_NATIVE=1` forces the fallback. The fallback says ONCE through the given
 * logger (warn) which cross-process guarantees it lacks and how to get them.
 */
export function loadNativeFs(logger?: Logger): NativeFs {
  if (selection === undefined) {
    selection = selectBackend();
    // Sync hashing (config hashes, auto keys) uses the addon until the WebAssembly is ready.
    if (selection.binding) useNativeXxh64(selection.binding.xxh64);
    if (selection.fs.kind === "js-fallback" && !nativeDisabledByEnv()) emitFallbackWarning(selection.problems);
  }
  if (logger !== undefined && logger !== silentLogger && !reported) {
    reported = true;
    const { fs, problems } = selection;
    if (fs.kind === "js-fallback") {
      logger.warn(fallbackWarning(problems));
    } else {
      // A prebuilt that failed to load (wrong libc, stale ABI) before a local build did.
      for (const problem of problems) logger.warn(logLine("skipped a native addon binary", { problem }));
      logger.debug(logLine("native addon loaded", { kind: fs.kind, path: fs.binaryPath }));
    }
  }
  return selection.fs;
}

/** For tests: forget the memoised choice (and whether the fallback warning was given). */
export function resetNativeFsForTest(): void {
  selection = undefined;
  reported = false;
}
