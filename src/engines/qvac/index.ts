/**
 * kvkeep for QVAC's llama.cpp addon (`@qvac/llm-llamacpp` 0.53.0) on the Bare runtime:
 * `import { createQvacCompletion } from "kvkeep/qvac"`. The addon is an optional peer
 * dependency; this entry point never imports it (the caller passes a loaded instance).
 */
export { createQvacCompletion } from "./completion.js";
export type { QvacCompletion, QvacCompletionOptions, QvacCompletionParams, QvacCompletionResult, QvacCompletionStats } from "./options.js";
export type { CompletionCommitFailure, CompletionStats } from "../shared/stats.js";
export { SUPPORTED_QVAC_ADDON_VERSION } from "./addon-version.js";
export { fingerprintQvacModel } from "./fingerprint.js";
export { shouldCommitCachedTurn, type CacheCommitContext } from "./commit-rules.js";
export type { QvacGenerationParams, QvacMessage, QvacModel } from "./model.js";
