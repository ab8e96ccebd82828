/**
 * `kvkeep/keys`: the auto-mode key scheme, for a handler that keys, indexes or matches caches
 * itself (docs/api.md). The adapters and auto mode use it already; most apps never need it.
 */
export { autoCacheKey, KeyChain, messageKeyChain, normalizeAssistantContent } from "./auto-key.js";
