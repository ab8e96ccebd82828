import { writeFileSync } from "node:fs";
import path from "node:path";
import xxhash, { type XXHashAPI } from "xxhash-wasm";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { isKvKeepError } from "../../src/errors.js";
import type { NativeFs } from "../../src/native/types.js";
import { backends, nativeSkipped, nativeSuiteName, requireNative, seededBytes, suiteName, TempDirs } from "./helpers.js";

const MiB = 1024 * 1024;
/** Around every stripe/lane edge, plus the 1 MiB read chunk of the native worker and several chunks. */
const SIZES = [0, 1, 3, 4, 7, 8, 31, 32, 33, 63, 64, 100, MiB - 1, MiB, MiB + 1, 3 * MiB + 17, 4 * MiB + 33];
const SEEDS = [0n, 1n, 0x9e3779b185ebca87n, 1n << 63n, (1n << 64n) - 1n];
const runSeed = Number(process.env.KVKEEP_TEST_SEED ?? Date.now() % 2 ** 31);

let api: XXHashAPI;
const temp = new TempDirs();
let dir: string;
const files = new Map<number, { file: string; bytes: Buffer }>();

beforeAll(async () => {
  api = await xxhash();
  dir = temp.make();
  for (const size of SIZES) {
    const bytes = seededBytes(size, runSeed + size);
    const file = path.join(dir, `random-${size}.bin`);
    writeFileSync(file, bytes);
    files.set(size, { file, bytes });
  }
});
afterAll(() => temp.cleanup());

function expected(bytes: Uint8Array, seed: bigint): string {
  return api.h64Raw(bytes, seed).toString(16).padStart(16, "0");
}

describe.each(backends)("xxh64File", (backend) => {
  describe.skipIf(backend.skip)(suiteName(backend, "xxh64File"), () => {
    let fs: NativeFs;
    beforeAll(() => {
      fs = backend.get();
    });

    it.each(SIZES)(`equals xxhash-wasm h64Raw for a random file of %i bytes under several seeds (data seed ${runSeed})`, async (size) => {
      const { file, bytes } = files.get(size)!;
      for (const seed of SEEDS) {
        expect(await fs.xxh64File(file, seed), `size=${size} seed=${seed}`).toBe(expected(bytes, seed));
      }
    });

    it("defaults to seed 0 and returns 16 lowercase hex chars", async () => {
      const { file, bytes } = files.get(100)!;
      const hash = await fs.xxh64File(file);
      expect(hash).toMatch(/^[0-9a-f]{16}$/);
      expect(hash).toBe(expected(bytes, 0n));
    });

    it("hashes an empty file to the published XXH64 of no input (ef46db3751d8e999)", async () => {
      expect(await fs.xxh64File(files.get(0)!.file)).toBe("ef46db3751d8e999");
    });

    it("rejects with IO_ERROR for a missing file", async () => {
      const error = await fs.xxh64File(path.join(dir, "missing.bin")).catch((e: unknown) => e);
      expect(isKvKeepError(error, "IO_ERROR")).toBe(true);
    });

    it("rejects seeds outside [0, 2^64) with INVALID_ARGUMENT", async () => {
      const { file } = files.get(8)!;
      for (const seed of [-1n, 1n << 64n]) {
        const error = await fs.xxh64File(file, seed).catch((e: unknown) => e);
        expect(isKvKeepError(error, "INVALID_ARGUMENT"), String(seed)).toBe(true);
      }
    });
  });
});

describe.skipIf(nativeSkipped)(nativeSuiteName("native XXH64 internals"), () => {
  it("the in-memory hash equals xxhash-wasm for every length 0..300 and random seeds", () => {
    const { binding } = requireNative();
    for (let size = 0; size <= 300; size++) {
      const bytes = seededBytes(size, runSeed ^ size);
      const seed = BigInt.asUintN(64, BigInt(runSeed) * BigInt(size + 1) * 0x9e3779b185ebca87n);
      expect(binding.xxh64(bytes, seed), `size=${size} seed=${seed}`).toBe(expected(bytes, seed));
    }
  });

  it("gives the same hash whatever read size splits the file into (stripes cut at odd offsets)", async () => {
    const { binding } = requireNative();
    const { file, bytes } = files.get(MiB + 1)!;
    const want = expected(bytes, 42n);
    for (const chunk of [1 << 20, 4095, 33, 31, 7]) {
      // 1-byte reads of 1 MiB would take long for no extra coverage: 7 already splits every stripe.
      expect(await binding.xxh64File(file, 42n, chunk), `chunk=${chunk}`).toBe(want);
    }
    const small = files.get(100)!;
    expect(await binding.xxh64File(small.file, 0n, 1)).toBe(expected(small.bytes, 0n));
  });
});
