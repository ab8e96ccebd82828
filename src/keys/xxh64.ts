/**
 * XXH64 in plain JavaScript, synchronous, with no WebAssembly and no top-level await (pure:
 * no I/O). It is what keeps `generateConfigHash` and the auto-key chain synchronous in
 * every runtime kvkeep loads in — Node, and Bare, where compiling WebAssembly during a
 * top-level await can end the process silently — and what lets the package load without
 * waiting for anything.
 *
 * 64-bit lanes are kept as two unsigned 32-bit halves in locals; products are built from
 * 16-bit partial products (exact in doubles), so nothing allocates per byte. Inputs are
 * read as little-endian 32-bit words through a DataView.
 */

// The five primes, as [high, low] 32-bit halves.
const P1H = 0x9e3779b1, P1L = 0x85ebca87;
const P2H = 0xc2b2ae3d, P2L = 0x27d4eb4f;
const P3H = 0x165667b1, P3L = 0x9e3779f9;
const P4H = 0x85ebca77, P4L = 0xc2b2ae63;
const P5H = 0x27d4eb2f, P5L = 0x165667c5;

// Results of the 64-bit helpers (module scratch: no allocation in the hot loop).
let rh = 0;
let rl = 0;

/** (ah,al) * (bh,bl) mod 2^64 → rh, rl. */
function mul(ah: number, al: number, bh: number, bl: number): void {
  const a0 = al & 0xffff, a1 = al >>> 16, b0 = bl & 0xffff, b1 = bl >>> 16;
  const p00 = a0 * b0, p01 = a0 * b1, p10 = a1 * b0, p11 = a1 * b1;
  const mid = (p00 >>> 16) + (p01 & 0xffff) + (p10 & 0xffff);
  rl = (((mid & 0xffff) << 16) | (p00 & 0xffff)) >>> 0;
  rh = (p11 + (p01 >>> 16) + (p10 >>> 16) + (mid >>> 16) + Math.imul(al, bh) + Math.imul(ah, bl)) >>> 0;
}

/** (ah,al) + (bh,bl) mod 2^64 → rh, rl. */
function add(ah: number, al: number, bh: number, bl: number): void {
  const lo = al + bl;
  rl = lo >>> 0;
  rh = (ah + bh + (lo > 0xffffffff ? 1 : 0)) >>> 0;
}

/** rotl((h,l), r) for 0 < r < 32 → rh, rl. */
function rotl(h: number, l: number, r: number): void {
  rh = ((h << r) | (l >>> (32 - r))) >>> 0;
  rl = ((l << r) | (h >>> (32 - r))) >>> 0;
}

/** round(acc, input) = rotl(acc + input * P2, 31) * P1 → rh, rl. */
function round(acch: number, accl: number, ih: number, il: number): void {
  mul(ih, il, P2H, P2L);
  add(acch, accl, rh, rl);
  rotl(rh, rl, 31);
  mul(rh, rl, P1H, P1L);
}

/** mergeRound(acc, val) = (acc ^ round(0, val)) * P1 + P4 → rh, rl. */
function mergeRound(acch: number, accl: number, vh: number, vl: number): void {
  round(0, 0, vh, vl);
  mul((acch ^ rh) >>> 0, (accl ^ rl) >>> 0, P1H, P1L);
  add(rh, rl, P4H, P4L);
}

/** XXH64 of `bytes[0, length)` with a 64-bit seed, as [high, low] 32-bit halves. */
export function xxh64Halves(bytes: Uint8Array, length: number, seedH: number, seedL: number): [number, number] {
  const view = new DataView(bytes.buffer, bytes.byteOffset, length);
  let p = 0;
  let hh: number, hl: number;
  if (length >= 32) {
    add(seedH, seedL, P1H, P1L);
    add(rh, rl, P2H, P2L);
    let v1h = rh, v1l = rl;
    add(seedH, seedL, P2H, P2L);
    let v2h = rh, v2l = rl;
    let v3h = seedH, v3l = seedL;
    // seed - P1 = seed + (2^64 - P1); P1's low half is not 0, so no carry into the high half.
    add(seedH, seedL, ~P1H >>> 0, (-P1L) >>> 0);
    let v4h = rh, v4l = rl;
    const limit = length - 32;
    while (p <= limit) {
      round(v1h, v1l, view.getUint32(p + 4, true), view.getUint32(p, true));
      v1h = rh; v1l = rl;
      round(v2h, v2l, view.getUint32(p + 12, true), view.getUint32(p + 8, true));
      v2h = rh; v2l = rl;
      round(v3h, v3l, view.getUint32(p + 20, true), view.getUint32(p + 16, true));
      v3h = rh; v3l = rl;
      round(v4h, v4l, view.getUint32(p + 28, true), view.getUint32(p + 24, true));
      v4h = rh; v4l = rl;
      p += 32;
    }
    rotl(v1h, v1l, 1);
    let ah = rh, al = rl;
    rotl(v2h, v2l, 7);
    add(ah, al, rh, rl);
    ah = rh; al = rl;
    rotl(v3h, v3l, 12);
    add(ah, al, rh, rl);
    ah = rh; al = rl;
    rotl(v4h, v4l, 18);
    add(ah, al, rh, rl);
    mergeRound(rh, rl, v1h, v1l);
    mergeRound(rh, rl, v2h, v2l);
    mergeRound(rh, rl, v3h, v3l);
    mergeRound(rh, rl, v4h, v4l);
    hh = rh; hl = rl;
  } else {
    add(seedH, seedL, P5H, P5L);
    hh = rh; hl = rl;
  }
  // h += length (length < 2^53: split into halves)
  add(hh, hl, Math.floor(length / 0x100000000) >>> 0, length >>> 0);
  hh = rh; hl = rl;
  while (p + 8 <= length) {
    round(0, 0, view.getUint32(p + 4, true), view.getUint32(p, true));
    rotl((hh ^ rh) >>> 0, (hl ^ rl) >>> 0, 27);
    mul(rh, rl, P1H, P1L);
    add(rh, rl, P4H, P4L);
    hh = rh; hl = rl;
    p += 8;
  }
  if (p + 4 <= length) {
    mul(0, view.getUint32(p, true), P1H, P1L);
    rotl((hh ^ rh) >>> 0, (hl ^ rl) >>> 0, 23);
    mul(rh, rl, P2H, P2L);
    add(rh, rl, P3H, P3L);
    hh = rh; hl = rl;
    p += 4;
  }
  while (p < length) {
    mul(0, bytes[p]!, P5H, P5L);
    rotl((hh ^ rh) >>> 0, (hl ^ rl) >>> 0, 11);
    mul(rh, rl, P1H, P1L);
    hh = rh; hl = rl;
    p++;
  }
  // Avalanche: h ^= h >> 33; h *= P2; h ^= h >> 29; h *= P3; h ^= h >> 32.
  hl = (hl ^ (hh >>> 1)) >>> 0;
  mul(hh, hl, P2H, P2L);
  const sl = ((rl >>> 29) | (rh << 3)) >>> 0;
  mul((rh ^ (rh >>> 29)) >>> 0, (rl ^ sl) >>> 0, P3H, P3L);
  return [rh, (rl ^ rh) >>> 0];
}


const encoder = new TextEncoder();
let scratch = new Uint8Array(4096);

/** UTF-8 bytes of `text` in a reused buffer (valid until the next call), and their length. */
export function utf8Scratch(text: string): { bytes: Uint8Array; length: number } {
  // UTF-8 needs at most 3 bytes per UTF-16 unit.
  if (text.length * 3 > scratch.length) scratch = new Uint8Array(Math.max(text.length * 3, scratch.length * 2));
  const { written } = encoder.encodeInto(text, scratch);
  return { bytes: scratch, length: written };
}
