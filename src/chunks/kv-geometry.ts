/**
 * The KV geometry: what every state of one model and context configuration shares (the
 * header fields of the state's KV section), and its encoding for manifests and chunk
 * identities. Pure.
 */
import { xxh64 } from "../keys/hash.js";
import { malformed, Reader } from "./state-bytes.js";

/** Far above any model's layer count; a larger number is a corrupt file. */
export const MAX_LAYERS = 4096;

/** One layer's K and V as the state describes them. */
export interface LayerKv {
  /** ggml type id of K (1 = F16, 8 = Q8_0, ...). */
  readonly kType: number;
  /** Bytes of one cell's K row. */
  readonly kRowBytes: number;
  readonly vType: number;
  /** Bytes of one cell's V (its row, or E elements when transposed). */
  readonly vRowBytes: number;
  /** Transposed V only: bytes of one element, and the number E of element rows. 0 otherwise. */
  readonly vElementBytes: number;
  readonly vWidth: number;
}

/** What every state of one model and context configuration shares: the KV section's header fields. */
export interface KvGeometry {
  /** V stored transposed (flash attention off). */
  readonly vTrans: boolean;
  readonly layers: readonly LayerKv[];
  /** K and V bytes of one token, every layer. */
  readonly kvBytesPerToken: number;
}

export function makeGeometry(vTrans: boolean, layers: readonly LayerKv[]): KvGeometry {
  let perToken = 0;
  for (const layer of layers) perToken += layer.kRowBytes + layer.vRowBytes;
  return { vTrans, layers, kvBytesPerToken: perToken };
}

/**
 * The geometry as bytes: u32 v_trans, u32 n_layer, every layer's K header (i32 type, u64 row
 * bytes), every layer's V header (i32 type, u64 row bytes; or transposed: i32 type, u32
 * element bytes, u32 width) — exactly the header fields of the state's KV section.
 */
export function encodeKvGeometry(geometry: KvGeometry): Buffer {
  const n = geometry.layers.length;
  const out = Buffer.alloc(8 + 24 * n);
  out.writeUInt32LE(geometry.vTrans ? 1 : 0, 0);
  out.writeUInt32LE(n, 4);
  let at = 8;
  for (const layer of geometry.layers) {
    out.writeInt32LE(layer.kType, at);
    out.writeBigUInt64LE(BigInt(layer.kRowBytes), at + 4);
    at += 12;
  }
  for (const layer of geometry.layers) {
    at = writeVHeader(out, at, geometry.vTrans, layer);
  }
  return out;
}

export function writeVHeader(out: Buffer, at: number, vTrans: boolean, layer: LayerKv): number {
  out.writeInt32LE(layer.vType, at);
  if (vTrans) {
    out.writeUInt32LE(layer.vElementBytes, at + 4);
    out.writeUInt32LE(layer.vWidth, at + 8);
  } else {
    out.writeBigUInt64LE(BigInt(layer.vRowBytes), at + 4);
  }
  return at + 12;
}

/** The inverse of encodeKvGeometry (STATE_MALFORMED for bytes it did not make). */
export function decodeKvGeometry(bytes: Uint8Array): KvGeometry {
  const r = new Reader(bytes);
  const vTransField = r.u32("v_trans");
  const n = r.u32("the layer count");
  if (vTransField > 1 || n === 0 || n > MAX_LAYERS || bytes.byteLength !== 8 + 24 * n) throw malformed("not an encoded KV geometry");
  const ks: { type: number; row: number }[] = [];
  for (let l = 0; l < n; l++) ks.push({ type: r.i32("K type"), row: r.u64("K row") });
  const layers: LayerKv[] = [];
  for (let l = 0; l < n; l++) {
    const vType = r.i32("V type");
    const k = ks[l]!;
    if (vTransField === 1) {
      const element = r.u32("V element");
      const width = r.u32("V width");
      layers.push({ kType: k.type, kRowBytes: k.row, vType, vRowBytes: element * width, vElementBytes: element, vWidth: width });
    } else {
      const row = r.u64("V row");
      layers.push({ kType: k.type, kRowBytes: k.row, vType, vRowBytes: row, vElementBytes: 0, vWidth: 0 });
    }
  }
  for (const layer of layers) {
    if (layer.kType < 0 || layer.vType < 0 || layer.kRowBytes === 0 || layer.vRowBytes === 0) throw malformed("an encoded KV geometry with an empty layer");
  }
  return makeGeometry(vTransField === 1, layers);
}

/** XXH64 of the encoded geometry; 0 for none (an empty state). Ties a chunk to the geometry it was cut from. */
export function geometryDigest(geometry: KvGeometry | null): bigint {
  return geometry === null ? 0n : xxh64(encodeKvGeometry(geometry));
}
