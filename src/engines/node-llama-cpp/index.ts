/**
 * kvkeep for node-llama-cpp: `import { createLlamaCppCompletion } from "kvkeep/node-llama-cpp"`.
 * node-llama-cpp is an optional peer dependency; only this entry point imports it.
 */
export {
  createLlamaCppCompletion,
  type CompletionParams,
  type CompletionResult,
  type CompletionStats,
  type LlamaCppCompletion,
  type LlamaCppCompletionOptions,
} from "./completion.js";
export { fingerprintModel, modelIdFromModel } from "./fingerprint.js";
export type { LlamaTool } from "./render.js";
