import path from "node:path";
import { KvKeepError } from "../errors.js";
import { isWellFormedUtf16 } from "./scope.js";

/** Longest file name most file systems accept, in UTF-8 bytes. */
export const MAX_COMPONENT_BYTES = 255;

/** Auto-mode keys look like this; a custom key may not, so the two never share a directory. */
export const AUTO_KEY_PATTERN = /^auto-[0-9a-f]{16}$/;

/** Auto-mode caches are kvkeep's (evictable by default); any other key is the user's, "named". */
export function cacheKindOf(cacheKey: string): "auto" | "named" {
  return AUTO_KEY_PATTERN.test(cacheKey) ? "auto" : "named";
}

/** kvkeep's own files (settings, …) live here under the root. */
export const INTERNAL_DIR_NAME = ".kvkeep";

/** Scoped caches live under `<root>/.scopes/<scope id>/` (src/layout/paths.ts): not a key either. */
export const SCOPES_DIR_NAME = ".scopes";

/** Names directly under the root that are kvkeep's own, never a cache key. */
export function isReservedRootName(name: string): boolean {
  return name === INTERNAL_DIR_NAME || name === SCOPES_DIR_NAME;
}

const CONFIG_HASH_PATTERN = /^[A-Za-z0-9_-]{1,128}$/;

/**
 * Reject anything that is not exactly one safe path component, before any file is touched:
 * empty, `.`/`..`, separators, NUL, absolute paths (POSIX or Windows), over 255 bytes, and
 * lone surrogates (not well-formed UTF-16: `"x\uD800"` and `"x\uDBFF"` would both be written
 * as `x` + U+FFFD, one directory for two keys).
 * `argument` names the parameter in the error. A drive-letter prefix (`C:x`) is refused
 * only on Windows, where it names a drive; elsewhere `u:42` is an ordinary file name.
 */
export function assertSafeComponent(value: unknown, argument: string, platform: NodeJS.Platform = process.platform): asserts value is string {
  if (typeof value !== "string" || value.length === 0) {
    throw new KvKeepError("KEY_EMPTY", `${argument} must be a non-empty string.`, { argument });
  }
  if (value.includes("\0")) {
    throw new KvKeepError("KEY_HAS_NUL", `${argument} contains a NUL byte; use a plain name.`, { argument });
  }
  if (!isWellFormedUtf16(value)) {
    throw new KvKeepError(
      "KEY_LONE_SURROGATE",
      `${argument} ${JSON.stringify(value)} contains a lone surrogate (not well-formed UTF-16), which has no file name of its own; use a well-formed string.`,
      { argument },
    );
  }
  if (path.posix.isAbsolute(value) || path.win32.isAbsolute(value) || (platform === "win32" && /^[A-Za-z]:/.test(value))) {
    throw new KvKeepError("KEY_ABSOLUTE", `${argument} ${JSON.stringify(value)} is an absolute path; pass a plain name.`, {
      argument,
    });
  }
  if (value.includes("/") || value.includes("\\")) {
    throw new KvKeepError(
      "KEY_HAS_SEPARATOR",
      `${argument} ${JSON.stringify(value)} contains a path separator; it must be one path component (replace "/" and "\\").`,
      { argument },
    );
  }
  if (value === "." || value === "..") {
    throw new KvKeepError("KEY_DOT_SEGMENT", `${argument} may not be "." or "..".`, { argument });
  }
  if (Buffer.byteLength(value, "utf8") > MAX_COMPONENT_BYTES) {
    throw new KvKeepError(
      "KEY_TOO_LONG",
      `${argument} is ${Buffer.byteLength(value, "utf8")} bytes; the limit is ${MAX_COMPONENT_BYTES} (hash long names first).`,
      { argument },
    );
  }
}

/** A custom key: a safe component that is neither an auto key nor kvkeep's internal directory. */
export function assertCustomKey(value: unknown, argument = "customKey"): asserts value is string {
  assertSafeComponent(value, argument);
  if (AUTO_KEY_PATTERN.test(value) || isReservedRootName(value)) {
    throw new KvKeepError(
      "KEY_RESERVED",
      `${argument} ${JSON.stringify(value)} is reserved (auto-mode keys, "${INTERNAL_DIR_NAME}" and "${SCOPES_DIR_NAME}"); choose another name.`,
      { argument },
    );
  }
}

/** A key as `delete` accepts it: any custom key or auto key. */
export function assertCacheKey(value: unknown, argument = "kvCacheKey"): asserts value is string {
  assertSafeComponent(value, argument);
  if (isReservedRootName(value)) {
    throw new KvKeepError("KEY_RESERVED", `${argument} "${value}" is kvkeep's own directory, not a cache.`, {
      argument,
    });
  }
}

export function assertModelId(value: unknown, argument = "modelId"): asserts value is string {
  assertSafeComponent(value, argument);
}

/** Config hashes name files: letters, digits, `_` and `-` only (what `generateConfigHash` returns fits). */
export function assertConfigHash(value: unknown, argument = "configHash"): asserts value is string {
  assertSafeComponent(value, argument);
  if (!CONFIG_HASH_PATTERN.test(value)) {
    throw new KvKeepError(
      "INVALID_ARGUMENT",
      `${argument} ${JSON.stringify(value)} must be 1-128 letters, digits, "_" or "-" (use generateConfigHash).`,
      { argument },
    );
  }
}
