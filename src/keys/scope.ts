/**
 * Isolation scopes (pure): whose conversations a cache belongs to — a user, a tenant, an API
 * key. A scope is an opaque string the caller chooses; kvkeep never writes it anywhere. What
 * goes into paths, index-log records, delete records, manifests and remote keys is its
 * *scope id*: 32 hex chars of a domain-separated SHA-256 of the string. Two scopes never
 * share a cache, a key or a prefix-index entry; no scope (null) is the one shared space of
 * kvkeep before scopes, with its layout unchanged.
 *
 * Why SHA-256 and not XXH64: the id stands for a caller's secret-ish string (serve derives
 * scopes from API keys) in files others may list; a cryptographic hash keeps the string
 * from being recovered or a second string from being made to collide with it.
 */
import { createHash } from "node:crypto";
import { KvKeepError } from "../errors.js";

/** A scope id: what stands for a scope on disk and in Redis. */
export const SCOPE_ID_PATTERN = /^[0-9a-f]{32}$/;

/** Longest scope accepted, in UTF-16 code units (an id, an email, a hashed API key fit easily). */
export const MAX_SCOPE_LENGTH = 1024;

/** A lone surrogate: a high one not followed by a low one, or a low one not after a high one. */
const LONE_SURROGATE = /[\uD800-\uDBFF](?![\uDC00-\uDFFF])|(?<![\uD800-\uDBFF])[\uDC00-\uDFFF]/;

/**
 * True when `value` is well-formed UTF-16. A lone surrogate has no UTF-8 form: it is written
 * as U+FFFD, so `"x\uD800"` and `"x\uDBFF"` would name one file (or hash to one scope id).
 */
export function isWellFormedUtf16(value: string): boolean {
  return !LONE_SURROGATE.test(value);
}

/** Refuse a scope that is not a non-empty, well-formed string of at most MAX_SCOPE_LENGTH units. */
export function assertScope(value: unknown, argument = "scope"): asserts value is string {
  if (typeof value !== "string" || value.length === 0) {
    throw new KvKeepError("INVALID_ARGUMENT", `${argument} must be a non-empty string (or left out for the shared space).`, { argument });
  }
  if (value.length > MAX_SCOPE_LENGTH) {
    throw new KvKeepError("INVALID_ARGUMENT", `${argument} is ${value.length} characters; the limit is ${MAX_SCOPE_LENGTH} (hash a longer identity first).`, {
      argument,
    });
  }
  if (!isWellFormedUtf16(value)) {
    throw new KvKeepError("INVALID_ARGUMENT", `${argument} contains a lone surrogate (not well-formed UTF-16); two such scopes could not be told apart.`, {
      argument,
    });
  }
}

/** The id of a scope: SHA-256 over a domain tag and the scope's UTF-8 bytes, first 128 bits in hex. */
export function scopeIdOf(scope: string): string {
  return createHash("sha256").update(`kvkeep scope v1\0${scope}`, "utf8").digest("hex").slice(0, 32);
}

/** The scope id of an optional scope option: null for none (the shared space); validated. */
export function scopeIdOption(scope: unknown, argument = "scope"): string | null {
  if (scope === undefined || scope === null) return null;
  assertScope(scope, argument);
  return scopeIdOf(scope);
}
