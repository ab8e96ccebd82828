/**
 * Checks of what a caller passes to the Redis tier (pure): a bad argument is a bug in the
 * caller, so it throws INVALID_ARGUMENT naming the argument, before anything is sent.
 */
import { KvKeepError } from "../../errors.js";
import { assertCacheKey, assertConfigHash, assertModelId } from "../../keys/safe-key.js";
import { SCOPE_ID_PATTERN } from "../../keys/scope.js";
import type { RemoteCacheId } from "../types.js";

export function invalidArgument(argument: string, message: string): KvKeepError {
  return new KvKeepError("INVALID_ARGUMENT", message, { argument });
}

export function assertCacheId(id: RemoteCacheId): void {
  if (!id || typeof id !== "object") throw invalidArgument("id", "a remote cache id is { modelId, fingerprint, configHash, cacheKey }.");
  assertModelId(id.modelId);
  assertConfigHash(id.configHash);
  assertCacheKey(id.cacheKey, "cacheKey");
  if (!(id.fingerprint === null || typeof id.fingerprint === "string")) {
    throw invalidArgument("fingerprint", "fingerprint must be a string or null.");
  }
  assertScopeId(id.scopeId);
}

export function assertScopeId(scopeId: unknown): void {
  if (scopeId != null && !(typeof scopeId === "string" && SCOPE_ID_PATTERN.test(scopeId))) {
    throw invalidArgument("scopeId", "scopeId must be a scope's id (32 hex characters, from the store) or null for the shared space.");
  }
}
