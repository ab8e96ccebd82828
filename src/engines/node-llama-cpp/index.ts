/**
 * kvkeep for node-llama-cpp: `import { createLlamaCppCompletion } from "kvkeep/node-llama-cpp"`.
 * node-llama-cpp is an optional peer dependency; only this entry point imports it.
 */
export {
  createLlamaCppCompletion,
  type ChatWrapperLike,
  type CompletionParams,
  type CompletionResult,
  type CompletionStats,
  type LlamaCppCompletion,
  type LlamaCppCompletionOptions,
  type LlamaModelLike,
  type ChatMessage,
  type ResponseFormat,
  type ToolCall,
  type ToolCallDelta,
  type ToolChoice,
} from "./completion.js";
export type { CompletionCommitFailure } from "../shared/stats.js";
export { fingerprintModel, type LlamaContextLike, modelIdFromModel } from "./fingerprint.js";
export type { LlamaTool } from "./render.js";
