/**
 * The fingerprint of a model + context: what a state file's layout and meaning depend on.
 * A state file never meets a model it was not made by: llama.cpp throws on some mismatches
 * (layer count, KV width, KV type, flash attention) but loads others silently — same shape
 * with other weights gives wrong output, and a truncated file aborts the process — so the
 * fingerprint covers the weights too, not only the shapes (test/fixtures/ENGINE-FACTS.md).
 */
import { promises as fs } from "node:fs";
import type { LlamaContext, LlamaModel } from "node-llama-cpp";
import { xxh64Hex } from "../../keys/hash.js";

/** Bytes read from each of the sampled positions of the model file. */
const SAMPLE_BYTES = 64 * 1024;
const SAMPLES = 16;

/** JSON with bigints (GGUF metadata has 64-bit values) as decimal strings. */
function stableJson(value: unknown): string {
  return JSON.stringify(value, (_key, v: unknown) => (typeof v === "bigint" ? `${v}n` : v));
}

/**
 * XXH64 over SAMPLES slices of the file, evenly spread from the first to the last byte
 * (~1 MiB read whatever the model's size). Any retrained or fine-tuned weights change
 * every slice; a full-file hash would cost seconds on a multi-GB model at every start.
 */
async function sampleFile(filePath: string): Promise<{ size: number; sample: string }> {
  const handle = await fs.open(filePath, "r");
  try {
    const { size } = await handle.stat();
    const buffer = Buffer.alloc(SAMPLE_BYTES);
    const parts: string[] = [];
    for (let i = 0; i < SAMPLES; i++) {
      const position = Math.max(0, Math.floor(((size - SAMPLE_BYTES) * i) / (SAMPLES - 1)));
      const { bytesRead } = await handle.read(buffer, 0, SAMPLE_BYTES, position);
      parts.push(xxh64Hex(buffer.subarray(0, bytesRead)));
    }
    return { size, sample: xxh64Hex(parts.join("")) };
  } finally {
    await handle.close();
  }
}

/**
 * The model file's path: given, else node-llama-cpp's internal `_modelPath` (its public API
 * exposes only the base name), else null.
 */
export function modelFilePath(model: LlamaModel, given?: string): string | null {
  if (given) return given;
  const internal = (model as unknown as { _modelPath?: unknown })._modelPath;
  return typeof internal === "string" ? internal : null;
}

/**
 * Everything that decides whether a state file from `context` fits another context.
 * Without the model file (`modelPath` null) the weights cannot be sampled, and two models
 * of the same shape with different weights get the same fingerprint.
 */
export async function fingerprintModel(model: LlamaModel, context: LlamaContext, modelPath: string | null = modelFilePath(model)): Promise<string> {
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
export function modelIdFromModel(model: LlamaModel): string {
  const base = (model.filename ?? "model").split(/[\\/]/).pop()!.replace(/\.gguf$/i, "");
  const safe = base.replace(/[^A-Za-z0-9._-]/g, "_").replace(/^\.+/, "_").slice(0, 200);
  return safe.length > 0 ? safe : "model";
}
