/**
 * The fingerprint of a model + context: what a state file's layout and meaning depend on.
 * A state file never meets a model it was not made by: llama.cpp throws on some mismatches
 * (layer count, KV width, KV type, flash attention) but loads others silently — same shape
 * with other weights gives wrong output, and a truncated file aborts the process — so the
 * fingerprint covers the weights too, not only the shapes (test/fixtures/ENGINE-FACTS.md).
 */
import type { LlamaContext, LlamaModel } from "node-llama-cpp";
import { xxh64Hex } from "../../keys/hash.js";
import { sampleFile, stableJson } from "../fingerprint-parts.js";
import type { LlamaModelLike } from "./completion.js";

/** A node-llama-cpp `LlamaContext` from any copy of node-llama-cpp (see `LlamaModelLike`). */
export interface LlamaContextLike {
  readonly contextSize: number;
  readonly flashAttention: unknown;
  readonly kvCacheKeyType: unknown;
  readonly kvCacheValueType: unknown;
}

/**
 * The model file's path: given, else node-llama-cpp's internal `_modelPath` (its public API
 * exposes only the base name), else null.
 */
export function modelFilePath(model: LlamaModelLike, given?: string): string | null {
  if (given) return given;
  const internal = (model as unknown as { _modelPath?: unknown })._modelPath;
  return typeof internal === "string" ? internal : null;
}

/**
 * Everything that decides whether a state file from `context` fits another context.
 * Without the model file (`modelPath` null) the weights cannot be sampled, and two models
 * of the same shape with different weights get the same fingerprint.
 */
export async function fingerprintModel(given: LlamaModelLike, givenContext: LlamaContextLike, modelPath: string | null = modelFilePath(given)): Promise<string> {
  const model = given as unknown as LlamaModel;
  const context = givenContext as unknown as LlamaContext;
  const file = modelPath ? await sampleFile(modelPath) : { size: model.size, sample: "no-file" };
  const parts = {
    format: "kvkeep-llama-fp-1",
    metadata: model.fileInfo.metadata,
    tensors: model.fileInfo.fullTensorInfo?.map((t) => [t.name, t.dimensions, t.ggmlType]) ?? null,
    file,
    llamaCpp: model.llama.llamaCppRelease,
    contextSize: context.contextSize,
    flashAttention: context.flashAttention,
    kvKeyType: context.kvCacheKeyType,
    kvValueType: context.kvCacheValueType,
  };
  return xxh64Hex(stableJson(parts));
}

/** A model id that is one safe path component, from the model's file name. */
export function modelIdFromModel(model: LlamaModelLike): string {
  const base = (model.filename ?? "model").split(/[\\/]/).pop()!.replace(/\.gguf$/i, "");
  const safe = base.replace(/[^A-Za-z0-9._-]/g, "_").replace(/^\.+/, "_").slice(0, 200);
  return safe.length > 0 ? safe : "model";
}
