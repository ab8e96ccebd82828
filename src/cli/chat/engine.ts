/**
 * The engine of `kvkeep chat`: node-llama-cpp, the model `--model` names (a file, or an hf: URI
 * or URL downloaded once, as `kvkeep serve` resolves it) and one kvkeep adapter on it (one
 * context, one sequence). Imported by run.ts only when a chat starts, so no other kvkeep
 * command loads node-llama-cpp.
 */
import { getLlama, type Llama, LlamaLogLevel } from "node-llama-cpp";
import { createLlamaCppCompletion, type LlamaCppCompletion, modelIdFromModel } from "../../engines/node-llama-cpp/index.js";
import type { KvCacheStore } from "../../facade/kvkeep-store.js";
import type { Logger } from "../../logger.js";
import { loadModelReporting, ModelSourceError, resolveModelSpec } from "../../server/model-source.js";
import type { StartupStep } from "../../server/startup-status.js";
import { CliError } from "../errors.js";

export interface ChatEngineOptions {
  /** What --model gave: a GGUF file, an hf: URI or a URL. */
  readonly modelSpec: string;
  readonly modelsDir: string | null;
  /** Context size in tokens; null = the model's training context, at most 4096. */
  readonly contextSize: number | null;
  readonly threads: number;
  readonly scope: string | undefined;
}

export interface LoadedChatEngine {
  readonly adapter: LlamaCppCompletion;
  readonly modelId: string;
  /** Free the context, the model and node-llama-cpp (not the store). */
  dispose(): Promise<void>;
}

/** Load the model and create the adapter over `store`, reporting each step; START_FAILED when it cannot. */
export async function loadChatEngine(options: ChatEngineOptions, store: KvCacheStore, logger: Logger, onStep: (step: StartupStep) => void): Promise<LoadedChatEngine> {
  let resolved;
  try {
    resolved = await resolveModelSpec(options.modelSpec, {
      modelsDir: options.modelsDir,
      onDownload: (progress) => onStep({ step: "download", spec: options.modelSpec, ...progress }),
    });
  } catch (error) {
    if (error instanceof ModelSourceError) throw new CliError("START_FAILED", `--model ${error.message}`);
    throw error;
  }
  const modelPath = resolved.path;

  onStep({ step: "engine" });
  const llama: Llama = await getLlama({ logLevel: LlamaLogLevel.warn, maxThreads: options.threads, progressLogs: false });
  const model = await loadModelReporting(
    llama,
    resolved,
    onStep,
    (error) => new CliError("START_FAILED", `--model ${options.modelSpec}: node-llama-cpp could not load ${modelPath}: ${error.message}`),
  );
  const modelId = modelIdFromModel(model);
  const adapter = createLlamaCppCompletion({
    model,
    store,
    modelId,
    modelPath,
    threads: options.threads,
    logger,
    scope: options.scope,
    ...(options.contextSize !== null ? { contextSize: options.contextSize } : {}),
  });
  const dispose = async (): Promise<void> => {
    await adapter.dispose();
    await model.dispose();
    await llama.dispose();
  };

  onStep({ step: "contexts", count: 1 });
  try {
    // As kvkeep serve does: create the context and run one token now, so a bad --ctx fails
    // before the first message and the first turn's wait is not the context's creation.
    await adapter.completion({ history: [{ role: "user", content: "warm-up" }], kvCache: false, maxTokens: 1 });
  } catch (error) {
    await dispose();
    throw new CliError("START_FAILED", `could not create a context for the model: ${(error as Error).message}`);
  }
  return { adapter, modelId, dispose };
}
