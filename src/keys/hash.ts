/**
 * XXH64, synchronous from the first call, in every runtime. No top-level await: the package
 * loads without waiting for anything (a top-level await that compiles WebAssembly can end a
 * Bare process silently, and rules out CommonJS).
 *
 * Implementations, fastest first, all giving the same digests:
 * - xxhash-wasm, compiled in the background at import (~6 GB/s);
 * - the native addon's one-shot XXH64, once something registers it (`useNativeXxh64`);
 * - plain JavaScript (src/keys/xxh64.ts), always there (~10× slower: only the first calls of
 *   a process, before the WebAssembly is ready, or a runtime without WebAssembly, use it).
 */
import xxhash from "xxhash-wasm";
import { utf8Scratch, xxh64Halves } from "./xxh64.js";

type XxhashApi = Awaited<ReturnType<typeof xxhash>>;
type OneShot = (data: string | Uint8Array, seed: bigint) => bigint;

const MASK_32 = 0xffffffffn;

const jsOneShot: OneShot = (data, seed) => {
  const { bytes, length } = typeof data === "string" ? utf8Scratch(data) : { bytes: data, length: data.length };
  const [hi, lo] = xxh64Halves(bytes, length, Number(seed >> 32n), Number(seed & MASK_32));
  return (BigInt(hi) << 32n) | BigInt(lo);
};

let wasm: XxhashApi | null = null;
let oneShot: OneShot = jsOneShot;

/** Resolves when the WebAssembly implementation is in use (never rejects; stays on JS if it cannot load). */
export const hashReady: Promise<void> = xxhash().then(
  (api) => {
    wasm = api;
    // h64 hashes a string's UTF-8 bytes without an intermediate copy.
    oneShot = (data, seed) => (typeof data === "string" ? api.h64(data, seed) : api.h64Raw(data, seed));
  },
  () => {},
);

/**
 * Register the native addon's one-shot XXH64 (hex digest), used until the WebAssembly is
 * ready. Called by the native loader; a no-op once the WebAssembly is in use.
 */
export function useNativeXxh64(native: (bytes: Uint8Array, seed: bigint) => string): void {
  if (wasm) return;
  oneShot = (data, seed) => {
    const bytes = typeof data === "string" ? utf8Bytes(data) : data;
    return BigInt(`0x${native(bytes, seed)}`);
  };
}

function utf8Bytes(text: string): Uint8Array {
  const { bytes, length } = utf8Scratch(text);
  return bytes.subarray(0, length);
}

/** XXH64 as a bigint, for chaining (the previous hash seeds the next). */
export function xxh64(data: string | Uint8Array, seed: bigint = 0n): bigint {
  return oneShot(data, seed);
}

/** XXH64 as 16 lowercase hex chars. */
export function xxh64Hex(data: string | Uint8Array, seed: bigint = 0n): string {
  return hex64(oneShot(data, seed));
}

export function hex64(value: bigint): string {
  return value.toString(16).padStart(16, "0");
}

/**
 * A streaming XXH64 (files, when the native addon is absent). Streams through WebAssembly
 * once it is ready; before that (or without it) the chunks are kept and hashed at the end.
 */
export function createXxh64(seed: bigint = 0n): { update(chunk: Uint8Array): void; digestHex(): string } {
  if (wasm) {
    const state = wasm.create64(seed);
    return {
      update(chunk) {
        state.update(chunk);
      },
      digestHex() {
        return hex64(state.digest());
      },
    };
  }
  const chunks: Uint8Array[] = [];
  return {
    update(chunk) {
      chunks.push(chunk.slice());
    },
    digestHex() {
      const total = chunks.reduce((n, c) => n + c.length, 0);
      const all = new Uint8Array(total);
      let offset = 0;
      for (const c of chunks) {
        all.set(c, offset);
        offset += c.length;
      }
      return hex64(jsOneShot(all, seed));
    },
  };
}
