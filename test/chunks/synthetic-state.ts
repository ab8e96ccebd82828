/**
 * Sequence states written straight from the layout table in /work/shared/STATE-FORMAT.md
 * (and llama.cpp's llama_kv_cache::state_write_*), independently of src/chunks, for unit
 * tests of the parser, splitter and joiner. Every byte is a function of (layer, token index,
 * byte index), never of the state's length, so the state of the first M tokens of a longer
 * state is exactly what `buildState` makes for M tokens: a true prefix, as llama.cpp's own.
 */

export interface SyntheticLayer {
  readonly kType: number;
  readonly kRowBytes: number;
  readonly vType: number;
  /** Non-transposed V: bytes of one cell's row. */
  readonly vRowBytes?: number;
  /** Transposed V: element bytes and width E. */
  readonly vElementBytes?: number;
  readonly vWidth?: number;
}

export interface SyntheticState {
  readonly tokenCount: number;
  readonly layers: readonly SyntheticLayer[];
  readonly vTrans: boolean;
  readonly nStream?: number;
  readonly holder?: number;
  readonly seqId?: number;
  /** Cell positions (default 0..n-1). */
  readonly positions?: readonly number[];
  /** Another version number than 3. */
  readonly version?: number;
  /** Salt for the KV bytes and tokens (two conversations with other contents). Applies from token `saltFrom` on. */
  readonly salt?: number;
  readonly saltFrom?: number;
}

/** A deterministic byte of K/V data. */
function byteAt(kind: number, layer: number, token: number, index: number, salt: number): number {
  let x = Math.imul(kind + 1, 0x9e3779b1) ^ Math.imul(layer + 7, 0x85ebca6b) ^ Math.imul(token + 13, 0xc2b2ae35) ^ Math.imul(index + 3, 0x27d4eb2f) ^ salt;
  x = Math.imul(x ^ (x >>> 15), 0x2c1b3c6d);
  x ^= x >>> 12;
  return x & 0xff;
}

export function tokenAt(i: number, salt = 0): number {
  return (i * 37 + 11 + salt * 1009) % 32000;
}

class Writer {
  readonly chunks: Buffer[] = [];
  u32(v: number): this {
    const b = Buffer.alloc(4);
    b.writeUInt32LE(v >>> 0, 0);
    this.chunks.push(b);
    return this;
  }
  i32(v: number): this {
    const b = Buffer.alloc(4);
    b.writeInt32LE(v, 0);
    this.chunks.push(b);
    return this;
  }
  u64(v: number): this {
    const b = Buffer.alloc(8);
    b.writeBigUInt64LE(BigInt(v), 0);
    this.chunks.push(b);
    return this;
  }
  bytes(b: Buffer): this {
    this.chunks.push(b);
    return this;
  }
  done(): Buffer {
    return Buffer.concat(this.chunks);
  }
}

export function buildState(spec: SyntheticState): Buffer {
  const n = spec.tokenCount;
  const nStream = spec.nStream ?? 1;
  const holder = spec.holder ?? 0;
  const seqId = spec.seqId ?? holder;
  const saltOf = (i: number): number => (i >= (spec.saltFrom ?? 0) ? spec.salt ?? 0 : 0);
  const w = new Writer();
  w.u32(0x67677371).u32(spec.version ?? 3).u32(n);
  for (let i = 0; i < n; i++) w.i32(tokenAt(i, saltOf(i)));
  w.u32(nStream);
  for (let s = 0; s < nStream; s++) {
    if (s !== holder || n === 0) {
      w.u32(0);
      continue;
    }
    w.u32(n);
    for (let i = 0; i < n; i++) w.i32(spec.positions?.[i] ?? i).u32(1).i32(seqId);
    w.u32(spec.vTrans ? 1 : 0).u32(spec.layers.length);
    spec.layers.forEach((layer, l) => {
      w.i32(layer.kType).u64(layer.kRowBytes);
      const rows = Buffer.alloc(n * layer.kRowBytes);
      for (let i = 0; i < n; i++) for (let b = 0; b < layer.kRowBytes; b++) rows[i * layer.kRowBytes + b] = byteAt(0, l, i, b, saltOf(i));
      w.bytes(rows);
    });
    spec.layers.forEach((layer, l) => {
      if (!spec.vTrans) {
        const row = layer.vRowBytes!;
        w.i32(layer.vType).u64(row);
        const rows = Buffer.alloc(n * row);
        for (let i = 0; i < n; i++) for (let b = 0; b < row; b++) rows[i * row + b] = byteAt(1, l, i, b, saltOf(i));
        w.bytes(rows);
      } else {
        const el = layer.vElementBytes!;
        const width = layer.vWidth!;
        w.i32(layer.vType).u32(el).u32(width);
        // E rows; row j holds element j of every cell, in cell order
        const data = Buffer.alloc(width * n * el);
        for (let j = 0; j < width; j++) for (let i = 0; i < n; i++) for (let b = 0; b < el; b++) data[(j * n + i) * el + b] = byteAt(1, l, i, j * el + b, saltOf(i));
        w.bytes(data);
      }
    });
  }
  return w.done();
}

/** Two layers of an F16 model (types 1), rows of 8 bytes: 4 elements per K/V row. */
export const F16_LAYERS: readonly SyntheticLayer[] = [
  { kType: 1, kRowBytes: 8, vType: 1, vRowBytes: 8, vElementBytes: 2, vWidth: 4 },
  { kType: 1, kRowBytes: 8, vType: 1, vRowBytes: 8, vElementBytes: 2, vWidth: 4 },
];

/** Q8_0 K (34-byte blocks) with F16 V, three layers. */
export const MIXED_LAYERS: readonly SyntheticLayer[] = [0, 1, 2].map(() => ({ kType: 8, kRowBytes: 34, vType: 1, vRowBytes: 6, vElementBytes: 2, vWidth: 3 }));
