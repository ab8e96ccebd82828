/**
 * kvkeep's file-system primitives — locks, fsync, no-replace rename, page-cache hints,
 * XXH64 of files — behind one typed interface, from the native addon when it loads and
 * from a pure-JS fallback otherwise. Every other module gets them through loadNativeFs().
 */
import { useNativeXxh64 } from "../keys/hash.js";
import { type Logger, logLine, silentLogger } from "../logger.js";
import { nativeDisabledByEnv, selectBackend, type Selection } from "./loader.js";
import type { NativeFs } from "./types.js";

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
      fix: "build the addon: npm install --save-dev cmake-js node-addon-api && npm rebuild kvkeep (needs cmake and a C++17 compiler; in a kvkeep checkout: npm run build:native), or give each process its own cache root",
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
  const text = `kvkeep's native addon is not available for ${process.platform}-${process.arch} (${problems.join("; ")}), so kvkeep uses its pure-JS fallback: locks do not exclude other processes sharing the cache root. Build the addon with \`npm rebuild kvkeep\` (needs cmake and a C++17 compiler), or set KVKEEP_NO_NATIVE=1 to choose the fallback without this warning.`;
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
