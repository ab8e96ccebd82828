/**
 * Chunked turns on the real node-llama-cpp adapter: the tiny generated model with a child
 * fixture bundled for it, one turn in a fresh adapter in this process (a new context, so its
 * state comes from the root, as after a restart), and where a conversation's state is kept
 * after a commit.
 */
import type { LlamaModel } from "node-llama-cpp";
import { loadFixtureModel } from "../fixtures/engine.js";
import { bundleFixture } from "./child.js";
import { turnConfigHash } from "../../src/engines/shared/params.js";
import { type CompletionResult, createLlamaCppCompletion, modelIdFromModel } from "../../src/engines/node-llama-cpp/index.js";
import type { CacheMessage, KvCacheStore } from "../../src/index.js";

/** The tiny model loaded here, its file (for children to load), and the child `fixture` bundled. */
export async function tinyModelAndChild(fixture: string): Promise<{ model: LlamaModel; modelPath: string; child: string }> {
  const [{ model, path: modelPath }, child] = await Promise.all([loadFixtureModel("tiny"), bundleFixture(fixture)]);
  return { model, modelPath, child };
}

export interface TurnSize {
  maxTokens: number;
  contextSize: number;
}

/** One greedy turn with chunked states in a fresh adapter on `store`. */
export async function chunkedTurn(model: LlamaModel, store: KvCacheStore, history: CacheMessage[], kvCache: string | true, size: TurnSize): Promise<CompletionResult> {
  const adapter = createLlamaCppCompletion({ threads: 1, model, store, contextSize: size.contextSize, chunkedStates: true });
  try {
    return await adapter.completion({ history, kvCache, maxTokens: size.maxTokens, temperature: 0 });
  } finally {
    await adapter.dispose();
  }
}

/**
 * Where a conversation's state is after a turn committed `history` (its last message the
 * reply): the custom key's cache, or auto mode's key of the whole history, under the config
 * hash the adapter gives a history without tools.
 */
export function cachePathAfter(model: LlamaModel, store: KvCacheStore, kvCache: string | true, history: CacheMessage[]): string {
  const configHash = turnConfigHash(history);
  const session = store.createSession(modelIdFromModel(model));
  return kvCache === true ? session.autoCachePath(configHash, history) : session.customCachePath(kvCache, configHash);
}
