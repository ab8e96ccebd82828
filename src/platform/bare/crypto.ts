/**
 * `node:crypto` for the Bare build: `randomBytes` from the OS (through the native addon) and
 * `createHash("sha256")` in plain JavaScript — the two calls kvkeep makes. bare-crypto would
 * bring OpenSSL prebuilds (~25 MB) for these.
 */
import { platformBinding } from "./native.js";
import { sha256 } from "./sha256.js";

export function randomBytes(size: number): Buffer {
  if (!Number.isSafeInteger(size) || size < 0) throw new RangeError(`randomBytes size must be a non-negative integer, got ${size}`);
  const bytes = Buffer.alloc(size);
  platformBinding().randomFill(bytes);
  return bytes;
}

class Sha256Hash {
  #chunks: Uint8Array[] = [];
  #done = false;

  update(data: string | Uint8Array, encoding: BufferEncoding = "utf8"): this {
    if (this.#done) throw new Error("Digest already called");
    this.#chunks.push(typeof data === "string" ? Buffer.from(data, encoding) : data);
    return this;
  }

  digest(): Buffer;
  digest(encoding: BufferEncoding): string;
  digest(encoding?: BufferEncoding): Buffer | string {
    if (this.#done) throw new Error("Digest already called");
    this.#done = true;
    const digest = Buffer.from(sha256(Buffer.concat(this.#chunks)));
    return encoding ? digest.toString(encoding) : digest;
  }
}

export function createHash(algorithm: string): Sha256Hash {
  if (algorithm.toLowerCase() !== "sha256") {
    throw new Error(`kvkeep's Bare build hashes only sha256 (asked for ${algorithm})`);
  }
  return new Sha256Hash();
}
