/**
 * Hashing with xxhash-wasm. The WebAssembly instance is created once at import (top-level
 * await), so `generateConfigHash` and the auto-key chain stay synchronous.
 */
import xxhash from "xxhash-wasm";

const hasher = await xxhash();
const encoder = new TextEncoder();

/** XXH64 as 16 lowercase hex chars. */
export function xxh64Hex(data: string | Uint8Array, seed: bigint = 0n): string {
  const bytes = typeof data === "string" ? encoder.encode(data) : data;
  return hasher.h64Raw(bytes, seed).toString(16).padStart(16, "0");
}

/** XXH64 as a bigint, for chaining (the previous hash seeds the next). */
export function xxh64(data: string | Uint8Array, seed: bigint = 0n): bigint {
  const bytes = typeof data === "string" ? encoder.encode(data) : data;
  return hasher.h64Raw(bytes, seed);
}

/** A streaming XXH64 (for files when the native addon is absent). */
export function createXxh64(seed: bigint = 0n): { update(chunk: Uint8Array): void; digestHex(): string } {
  const state = hasher.create64(seed);
  return {
    update(chunk) {
      state.update(chunk);
    },
    digestHex() {
      return state.digest().toString(16).padStart(16, "0");
    },
  };
}
