/**
 * Bytes in and out of a llama.cpp sequence state (pure): a bounds-checked little-endian
 * reader, the errors for bytes kvkeep cannot take apart, and views put back together.
 */
import { StateFormatError } from "./errors.js";

/** Little-endian reads that never run past the end: a short read is STATE_TRUNCATED. */
export class Reader {
  readonly view: DataView;
  pos = 0;

  constructor(readonly bytes: Uint8Array) {
    this.view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  }

  get remaining(): number {
    return this.bytes.byteLength - this.pos;
  }

  need(bytes: number, what: string): void {
    if (bytes > this.remaining) {
      throw new StateFormatError(
        "STATE_TRUNCATED",
        `the state ends ${this.bytes.byteLength} bytes in, before ${what} (${bytes} bytes at offset ${this.pos}): a torn or cut file; never load it.`,
      );
    }
  }

  u32(what: string): number {
    this.need(4, what);
    const value = this.view.getUint32(this.pos, true);
    this.pos += 4;
    return value;
  }

  i32(what: string): number {
    this.need(4, what);
    const value = this.view.getInt32(this.pos, true);
    this.pos += 4;
    return value;
  }

  u64(what: string): number {
    this.need(8, what);
    const value = this.view.getBigUint64(this.pos, true);
    this.pos += 8;
    if (value > BigInt(Number.MAX_SAFE_INTEGER)) throw malformed(`${what} is ${value}, beyond any real size`);
    return Number(value);
  }

  skip(bytes: number, what: string): void {
    this.need(bytes, what);
    this.pos += bytes;
  }
}

export function malformed(detail: string): StateFormatError {
  return new StateFormatError("STATE_MALFORMED", `the state is not one kvkeep can take apart: ${detail}. Keep it whole (or drop it if it fails to load).`);
}

export function unsupported(detail: string): StateFormatError {
  return new StateFormatError("STATE_UNSUPPORTED", `kvkeep does not split this state: ${detail}. It is kept whole.`);
}

/** `parts` copied into one Buffer of `total` bytes (a mismatch is a bug in the caller's plan). */
export function concat(parts: readonly Uint8Array[], total: number): Buffer {
  const out = Buffer.allocUnsafe(total);
  let at = 0;
  for (const part of parts) {
    out.set(part, at);
    at += part.byteLength;
  }
  if (at !== total) throw new Error(`kvkeep: assembled ${at} bytes where ${total} were planned`);
  return out;
}

/** A little-endian u32 as its 4 bytes. */
export function u32(value: number): Buffer {
  const b = Buffer.allocUnsafe(4);
  b.writeUInt32LE(value, 0);
  return b;
}
