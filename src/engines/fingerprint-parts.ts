/** Pieces of engine fingerprints, shared by the node-llama-cpp and QVAC adapters. */
import { promises as fs } from "node:fs";
import { xxh64Hex } from "../keys/hash.js";

/** Bytes read from each of the sampled positions of the model file. */
const SAMPLE_BYTES = 64 * 1024;
const SAMPLES = 16;

/** JSON with bigints (GGUF metadata has 64-bit values) as decimal strings. */
export function stableJson(value: unknown): string {
  return JSON.stringify(value, (_key, v: unknown) => (typeof v === "bigint" ? `${v}n` : v));
}

/**
 * A cheap identity of a model file: XXH64 over SAMPLES slices spread evenly from its first
 * to its last byte (~1 MiB read whatever the model's size). Retrained or fine-tuned weights
 * change every slice; a full-file hash would cost seconds on a multi-GB model at every start.
 */
export async function sampleFile(filePath: string): Promise<{ size: number; sample: string }> {
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
