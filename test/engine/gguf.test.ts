import { spawn } from "node:child_process";
import { createHash } from "node:crypto";
import { mkdtempSync, readdirSync, readFileSync, rmSync, statSync, truncateSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { readGgufFileInfo } from "node-llama-cpp";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createContext, defaultChatWrapper, greedyGenerate, loadFixtureModel, renderChat } from "../fixtures/engine.js";
import {
  buildFixtureGgufSpec,
  buildLlamaGgufSpec,
  ensureModel,
  FIXTURE_TOKENS,
  isGeneratableByte,
  MODEL_SHAPES,
  modelFileName,
  resolveShape,
  writeFixtureModel,
  writeLlamaGguf,
} from "../fixtures/gguf/models.js";
import {
  float16BitsToFloat32,
  float32ToFloat16Bits,
  GgufValueType,
  gv,
  layoutGguf,
  readGgufHeader,
  writeGgufFile,
  type GgufFileSpec,
} from "../fixtures/gguf/writer.js";

let dir: string;
beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), "kvkeep-gguf-test-"));
});
afterAll(() => {
  rmSync(dir, { recursive: true, force: true });
});

const sha256 = (path: string): string => createHash("sha256").update(readFileSync(path)).digest("hex");

describe("float16 conversion", () => {
  it("rounds to nearest even and handles specials", () => {
    const cases: Array<[number, number]> = [
      [0, 0x0000],
      [-0, 0x8000],
      [1, 0x3c00],
      [-2, 0xc000],
      [0.5, 0x3800],
      [65504, 0x7bff],
      [65520, 0x7c00], // rounds up to inf
      [1e6, 0x7c00],
      [Number.POSITIVE_INFINITY, 0x7c00],
      [Number.NEGATIVE_INFINITY, 0xfc00],
      [2 ** -24, 0x0001], // smallest subnormal
      [2 ** -25, 0x0000], // tie -> even (0)
      [3 * 2 ** -25, 0x0002], // tie -> even (2)
      [2 ** -14, 0x0400], // smallest normal
      [1 + 2 ** -11, 0x3c00], // tie -> even
      [1 + 3 * 2 ** -11, 0x3c02], // tie -> even
      [0.1, 0x2e66],
    ];
    for (const [value, bits] of cases) expect(float32ToFloat16Bits(value), `${value}`).toBe(bits);
    expect(float32ToFloat16Bits(Number.NaN) & 0x7c00).toBe(0x7c00);
    for (const h of [0x0001, 0x03ff, 0x0400, 0x3c00, 0x3555, 0x7bff, 0xc000]) {
      expect(float32ToFloat16Bits(float16BitsToFloat32(h))).toBe(h);
    }
  });
});

describe("GGUF v3 writer", () => {
  const spec: GgufFileSpec = {
    metadata: [
      ["general.architecture", gv.str("test")],
      ["general.alignment", gv.u32(64)],
      ["t.u8", gv.u8(200)],
      ["t.i8", gv.i8(-5)],
      ["t.u16", gv.u16(65000)],
      ["t.i16", gv.i16(-300)],
      ["t.i32", gv.i32(-70000)],
      ["t.f32", gv.f32(0.25)],
      ["t.f64", gv.f64(1 / 3)],
      ["t.bool", gv.bool(true)],
      ["t.u64", gv.u64(2n ** 40n + 1n)],
      ["t.i64", gv.i64(-(2n ** 40n))],
      ["t.str", gv.str("héllo ✓")],
      ["t.arr.str", gv.arr("string", ["a", "", "ü"])],
      ["t.arr.i32", gv.arr("i32", [1, -2, 3])],
      ["t.arr.empty", gv.arr("string", [])],
    ],
    tensors: [
      { name: "a", dims: [3], type: "F32", generate: (emit) => emit(Float32Array.of(1, 2, 3)) },
      {
        name: "b",
        dims: [2, 3],
        type: "F16",
        generate: (emit) => {
          emit(Float32Array.of(0.5, -1));
          emit(Float32Array.of(2, 4, 8, 0.1));
        },
      },
    ],
  };

  it("writes header, typed metadata, tensor infos and aligned data that parse back", async () => {
    const path = join(dir, "synthetic.gguf");
    const { size, layout } = writeGgufFile(path, spec);
    expect(statSync(path).size).toBe(size);
    const bytes = readFileSync(path);
    expect(bytes.toString("latin1", 0, 4)).toBe("GGUF");
    expect(bytes.readUInt32LE(4)).toBe(3);
    expect(bytes.readBigUInt64LE(8)).toBe(2n);
    expect(bytes.readBigUInt64LE(16)).toBe(BigInt(spec.metadata.length));

    const parsed = readGgufHeader(path);
    expect(parsed.version).toBe(3);
    expect(parsed.alignment).toBe(64);
    expect(parsed.dataOffset).toBe(layout.dataOffset);
    expect(parsed.dataOffset % 64).toBe(0);
    expect(parsed.metadata.get("t.u8")).toBe(200);
    expect(parsed.metadata.get("t.i8")).toBe(-5);
    expect(parsed.metadata.get("t.u16")).toBe(65000);
    expect(parsed.metadata.get("t.i16")).toBe(-300);
    expect(parsed.metadata.get("t.i32")).toBe(-70000);
    expect(parsed.metadata.get("t.f32")).toBe(0.25);
    expect(parsed.metadata.get("t.f64")).toBe(1 / 3);
    expect(parsed.metadata.get("t.bool")).toBe(true);
    expect(parsed.metadata.get("t.u64")).toBe(2n ** 40n + 1n);
    expect(parsed.metadata.get("t.i64")).toBe(-(2n ** 40n));
    expect(parsed.metadata.get("t.str")).toBe("héllo ✓");
    expect(parsed.metadata.get("t.arr.str")).toEqual(["a", "", "ü"]);
    expect(parsed.metadata.get("t.arr.i32")).toEqual([1, -2, 3]);
    expect(parsed.metadata.get("t.arr.empty")).toEqual([]);
    expect(parsed.tensors).toEqual([
      { name: "a", dims: [3], type: 0, offset: 0 },
      { name: "b", dims: [2, 3], type: 1, offset: 64 },
    ]);

    const a = parsed.dataOffset;
    expect([bytes.readFloatLE(a), bytes.readFloatLE(a + 4), bytes.readFloatLE(a + 8)]).toEqual([1, 2, 3]);
    const b = parsed.dataOffset + 64;
    const halves = Array.from({ length: 6 }, (_, i) => float16BitsToFloat32(bytes.readUInt16LE(b + 2 * i)));
    expect(halves.slice(0, 5)).toEqual([0.5, -1, 2, 4, 8]);
    expect(halves[5]).toBeCloseTo(0.1, 3);
    expect(size).toBe(b + 12);

    // node-llama-cpp's own parser agrees (u64/i64 come back as bigint)
    const info = await readGgufFileInfo(path, { logWarnings: false });
    expect(info.version).toBe(3);
    expect(Number(info.tensorCount)).toBe(2);
    const t = (info.metadata as unknown as { t: Record<string, unknown> }).t;
    expect(t.u64).toBe(2n ** 40n + 1n);
    expect(t.str).toBe("héllo ✓");
    expect(info.tensorInfo?.map((x) => [x.name, x.dimensions, x.ggmlType, x.offset])).toEqual([
      ["a", [3], 0, 0],
      ["b", [2, 3], 1, 64],
    ]);
    expect(GgufValueType.ARRAY).toBe(9);
  });

  it("rejects a tensor that produces the wrong number of elements", () => {
    const bad: GgufFileSpec = {
      metadata: [],
      tensors: [{ name: "x", dims: [4], type: "F32", generate: (emit) => emit(new Float32Array(3)) }],
    };
    expect(() => writeGgufFile(join(dir, "bad.gguf"), bad)).toThrow(/produced 3 of 4/);
  });
});

describe("llama fixture models", () => {
  it("tiny has the llama metadata and the tensor shapes llama.cpp expects", async () => {
    const path = join(dir, "tiny.gguf");
    const shape = MODEL_SHAPES.tiny;
    const size = writeLlamaGguf(shape, path);
    expect(size).toBe(layoutGguf(buildLlamaGgufSpec(shape)).totalSize);
    const info = await readGgufFileInfo(path, { logWarnings: false });
    const md = info.metadata;
    expect(md.general.architecture).toBe("llama");
    expect(md.general.file_type).toBe(1);
    expect(md.general.alignment).toBe(32);
    expect(info.architectureMetadata).toMatchObject({
      context_length: shape.contextLength,
      embedding_length: 64,
      block_count: 2,
      feed_forward_length: shape.feedForwardLength,
      attention: { head_count: shape.headCount, head_count_kv: shape.headCountKv },
      rope: { dimension_count: 64 / shape.headCount },
    });
    expect(md.tokenizer.ggml.model).toBe("gpt2");
    expect(md.tokenizer.ggml.tokens).toHaveLength(shape.vocabSize);
    expect(md.tokenizer.chat_template).toContain("<|im_start|>");

    const n = 64;
    const headDim = n / shape.headCount;
    const kv = headDim * shape.headCountKv;
    const ff = shape.feedForwardLength;
    const V = shape.vocabSize;
    const expected: Record<string, number[]> = {
      "token_embd.weight": [n, V],
      "output_norm.weight": [n],
      "output.weight": [n, V],
    };
    for (let i = 0; i < 2; i++) {
      Object.assign(expected, {
        [`blk.${i}.attn_norm.weight`]: [n],
        [`blk.${i}.attn_q.weight`]: [n, n],
        [`blk.${i}.attn_k.weight`]: [n, kv],
        [`blk.${i}.attn_v.weight`]: [n, kv],
        [`blk.${i}.attn_output.weight`]: [n, n],
        [`blk.${i}.ffn_norm.weight`]: [n],
        [`blk.${i}.ffn_gate.weight`]: [n, ff],
        [`blk.${i}.ffn_down.weight`]: [ff, n],
        [`blk.${i}.ffn_up.weight`]: [n, ff],
      });
    }
    const tensors = info.tensorInfo ?? [];
    expect(Object.fromEntries(tensors.map((t) => [t.name, t.dimensions]))).toEqual(expected);
    for (const t of tensors) {
      expect(t.ggmlType, t.name).toBe(t.dimensions.length === 1 ? 0 : 1); // norms F32, matrices F16
      expect(Number(t.offset) % 32, t.name).toBe(0);
    }
  });

  it("the same shape gives the same bytes; a different seed gives different weights", () => {
    const a = join(dir, "seed1-a.gguf");
    const b = join(dir, "seed1-b.gguf");
    const c = join(dir, "seed2.gguf");
    writeLlamaGguf(MODEL_SHAPES.tiny, a);
    writeLlamaGguf(MODEL_SHAPES.tiny, b);
    writeLlamaGguf({ ...MODEL_SHAPES.tiny, seed: 2 }, c);
    expect(sha256(a)).toBe(sha256(b));
    expect(sha256(a)).not.toBe(sha256(c));
    expect(statSync(a).size).toBe(statSync(c).size);
    // the tensor data differs, not just the seed key
    const dataA = readFileSync(a).subarray(readGgufHeader(a).dataOffset);
    const dataC = readFileSync(c).subarray(readGgufHeader(c).dataOffset);
    expect(dataA.equals(dataC)).toBe(false);
  });

  it("ensureModel generates once, reuses, and replaces a torn file", async () => {
    const cache = join(dir, "cache");
    const path = await ensureModel("tiny", cache);
    expect(path).toBe(join(cache, modelFileName(MODEL_SHAPES.tiny)));
    const first = statSync(path);
    const again = await ensureModel("tiny", cache);
    expect(again).toBe(path);
    expect(statSync(path).mtimeMs).toBe(first.mtimeMs);
    expect(statSync(path).ino).toBe(first.ino);

    truncateSync(path, 1000);
    await ensureModel("tiny", cache);
    expect(statSync(path).size).toBe(first.size);
    expect(readdirSync(cache)).toEqual([modelFileName(MODEL_SHAPES.tiny)]);

    // different shapes never share a file
    expect(modelFileName(resolveShape("tiny", { seed: 2 }))).not.toBe(modelFileName(MODEL_SHAPES.tiny));
    expect(modelFileName(resolveShape("tiny", { chatTemplate: "none" }))).not.toBe(modelFileName(MODEL_SHAPES.tiny));
  });

  it("concurrent processes generating the same model never expose a torn file", async () => {
    const cache = join(dir, "concurrent");
    // big enough (~9 MB) that the writes overlap
    const overrides = { name: "conc", embeddingLength: 256, vocabSize: 8192, feedForwardLength: 512 };
    const code =
      "import { ensureModel } from './test/fixtures/gguf/models.ts';" +
      "import { statSync } from 'node:fs';" +
      "const p = await ensureModel('tiny', process.argv[1], JSON.parse(process.argv[2]));" +
      "console.log(JSON.stringify({ p, size: statSync(p).size }));";
    const run = (): Promise<string> =>
      new Promise((resolve, reject) => {
        const child = spawn(process.execPath, ["--import", "tsx", "--input-type=module", "-e", code, cache, JSON.stringify(overrides)], {
          cwd: join(import.meta.dirname, "..", ".."),
          stdio: ["ignore", "pipe", "pipe"],
        });
        let out = "";
        let err = "";
        child.stdout.on("data", (d: Buffer) => (out += d.toString()));
        child.stderr.on("data", (d: Buffer) => (err += d.toString()));
        child.on("error", reject);
        child.on("close", (code) => (code === 0 ? resolve(out.trim()) : reject(new Error(`child exited ${code}: ${err}`))));
      });
    const results = (await Promise.all([run(), run(), run()])).map((s) => JSON.parse(s.split("\n").pop()!) as { p: string; size: number });
    const shape = resolveShape("tiny", overrides);
    const expectedSize = layoutGguf(buildFixtureGgufSpec(shape)).totalSize;
    for (const r of results) {
      expect(r.p).toBe(join(cache, modelFileName(shape)));
      expect(r.size).toBe(expectedSize);
    }
    expect(readdirSync(cache)).toEqual([modelFileName(shape)]); // no temp files left
    const reference = join(dir, "conc-reference.gguf");
    writeFixtureModel(shape, reference);
    expect(sha256(results[0]!.p)).toBe(sha256(reference));
  });
});

describe("recurrent and sliding-window fixture models", () => {
  /** name -> dims of every tensor in a file, read back with node-llama-cpp's own GGUF reader. */
  const tensorDims = async (path: string): Promise<Record<string, number[]>> => {
    const info = await readGgufFileInfo(path, { logWarnings: false });
    return Object.fromEntries((info.tensorInfo ?? []).map((t) => [t.name, t.dimensions.map(Number)]));
  };

  it("tinyMamba has the mamba metadata and the tensor shapes llama.cpp's mamba loader asks for", async () => {
    const shape = MODEL_SHAPES.tinyMamba;
    const path = join(dir, "mamba.gguf");
    writeFixtureModel(shape, path);
    const info = await readGgufFileInfo(path, { logWarnings: false });
    expect(info.metadata.general.architecture).toBe("mamba");
    const n = shape.embeddingLength;
    const inner = 2 * n;
    expect(info.architectureMetadata).toMatchObject({
      context_length: shape.contextLength,
      embedding_length: n,
      block_count: shape.blockCount,
      ssm: { conv_kernel: shape.convKernel, inner_size: inner, state_size: shape.stateSize, time_step_rank: shape.timeStepRank },
    });
    const expected: Record<string, number[]> = {
      "token_embd.weight": [n, shape.vocabSize],
      "output_norm.weight": [n],
      "output.weight": [n, shape.vocabSize],
    };
    for (let i = 0; i < shape.blockCount; i++) {
      Object.assign(expected, {
        [`blk.${i}.attn_norm.weight`]: [n],
        [`blk.${i}.ssm_in.weight`]: [n, 2 * inner],
        [`blk.${i}.ssm_conv1d.weight`]: [shape.convKernel, inner],
        [`blk.${i}.ssm_conv1d.bias`]: [inner],
        [`blk.${i}.ssm_x.weight`]: [inner, shape.timeStepRank + 2 * shape.stateSize],
        [`blk.${i}.ssm_dt.weight`]: [shape.timeStepRank, inner],
        [`blk.${i}.ssm_dt.bias`]: [inner],
        [`blk.${i}.ssm_a`]: [shape.stateSize, inner],
        [`blk.${i}.ssm_d`]: [inner],
        [`blk.${i}.ssm_out.weight`]: [inner, n],
      });
    }
    expect(await tensorDims(path)).toEqual(expected);
  });

  it("tinySwa is gemma3 with a 32-token sliding window on layer 0 and full attention on layer 1", async () => {
    const shape = MODEL_SHAPES.tinySwa;
    const path = join(dir, "swa.gguf");
    writeFixtureModel(shape, path);
    const info = await readGgufFileInfo(path, { logWarnings: false });
    expect(info.metadata.general.architecture).toBe("gemma3");
    expect(info.architectureMetadata).toMatchObject({
      attention: { sliding_window: 32, sliding_window_pattern: 2, head_count: shape.headCount, head_count_kv: shape.headCountKv },
    });
    const dims = await tensorDims(path);
    const headDim = shape.embeddingLength / shape.headCount;
    expect(dims["blk.0.attn_q_norm.weight"]).toEqual([headDim]);
    expect(dims["blk.1.post_ffw_norm.weight"]).toEqual([shape.embeddingLength]);
    expect(dims["output.weight"]).toEqual([shape.embeddingLength, shape.vocabSize]); // not tied to token_embd
  });

  it("adding architectures left the llama files byte-identical, under the same names (no GGUF_WRITER_VERSION bump)", () => {
    // measured before the gemma3/mamba generators existed; a change here must bump GGUF_WRITER_VERSION
    expect(modelFileName(MODEL_SHAPES.tiny)).toBe("kvkeep-tiny-9fc2c6c14eef67fc.gguf");
    expect(modelFileName(resolveShape("tiny", { seed: 2 }))).toBe("kvkeep-tiny-c78dbd9752af41a0.gguf");
    const path = join(dir, "tiny-bytes.gguf");
    writeLlamaGguf(MODEL_SHAPES.tiny, path);
    expect(sha256(path)).toBe("2d1c9d882e02d1fad4711f055b4ca03383cfcf35db4d641c8c05c2f39dfec118");
  });

  it("shapes are validated per architecture", () => {
    expect(() => buildFixtureGgufSpec({ ...MODEL_SHAPES.tiny, slidingWindow: 32 })).toThrow(/need architecture gemma3/);
    expect(() => buildFixtureGgufSpec({ ...MODEL_SHAPES.tinySwa, slidingWindow: undefined })).toThrow(/needs slidingWindow/);
    expect(() => buildFixtureGgufSpec({ ...MODEL_SHAPES.tinyMamba, convKernel: 1 })).toThrow(/convKernel/);
    expect(() => buildLlamaGgufSpec(MODEL_SHAPES.tinySwa)).toThrow(/not a llama shape/);
  });

  it("node-llama-cpp loads both, resolves ChatML, and generates ASCII that re-tokenizes to itself", async () => {
    for (const name of ["tinyMamba", "tinySwa"] as const) {
      const { model } = await loadFixtureModel(name);
      expect(defaultChatWrapper(model).wrapperName, name).toBe("ChatML");
      const context = await createContext(model, { contextSize: 512, threads: 1 }); // tiny: 1 thread is fastest
      try {
        const prompt = renderChat(model, [
          { role: "system", content: "You are terse." },
          { role: "user", content: "Say something about disks." },
        ]);
        const { tokens } = await greedyGenerate(context.getSequence(), prompt, 24);
        const text = tokens.filter((t) => !model.isEogToken(t));
        expect(text.length, name).toBeGreaterThan(0);
        for (const t of text) expect(isGeneratableByte(t), `${name} token ${t}`).toBe(true);
        expect(model.tokenize(model.detokenize(text))).toEqual(text);
      } finally {
        await context.dispose();
      }
    }
  });
});

describe("node-llama-cpp on the tiny model", () => {
  it("loads, resolves the ChatML wrapper, and round-trips text through tokens", async () => {
    const { model } = await loadFixtureModel("tiny");
    expect(defaultChatWrapper(model).wrapperName).toBe("ChatML");
    expect(model.tokens.bos).toBe(FIXTURE_TOKENS.endOfText);
    expect(model.tokens.eos).toBe(FIXTURE_TOKENS.imEnd);
    expect(model.isEogToken(FIXTURE_TOKENS.imEnd as never)).toBe(true);

    const texts = ["Hello, world!", "a . b ? c , d ! e", "  leading and trailing  ", "tabs\tnew\nlines\r\n", "ünïcödé 😀 ✓", "<|im_end|> as plain text"];
    for (const text of texts) {
      const tokens = model.tokenize(text);
      expect(tokens).toHaveLength(Buffer.byteLength(text)); // one token per byte
      expect(model.detokenize(tokens)).toBe(text);
    }
    // with special tokens enabled, the control token text becomes the control token
    const special = model.tokenize("<|im_start|>user\nhi<|im_end|>", true);
    expect(special[0]).toBe(FIXTURE_TOKENS.imStart);
    expect(special[special.length - 1]).toBe(FIXTURE_TOKENS.imEnd);
    expect(model.detokenize(special, true)).toBe("<|im_start|>user\nhi<|im_end|>");
  });

  it("a model without a chat template falls back to the General wrapper", async () => {
    const { model } = await loadFixtureModel("tiny", { overrides: { chatTemplate: "none" } });
    expect(model.fileInfo.metadata.tokenizer.chat_template).toBeUndefined();
    expect(defaultChatWrapper(model).wrapperName).toBe("General");
  });

  it("greedy generation is deterministic across contexts and yields re-tokenizable ASCII", async () => {
    const { model } = await loadFixtureModel("tiny");
    const prompt = renderChat(model, [
      { role: "system", content: "You are terse." },
      { role: "user", content: "Say something about disks." },
    ]);
    const runs = [];
    for (let i = 0; i < 2; i++) {
      const context = await createContext(model, { contextSize: 512 });
      runs.push(await greedyGenerate(context.getSequence(), prompt, 24));
      await context.dispose();
    }
    expect(runs[0]!.tokens.length).toBeGreaterThan(0);
    expect(runs[1]!.tokens).toEqual(runs[0]!.tokens);
    const text = runs[0]!.tokens.filter((t) => !model.isEogToken(t));
    for (const t of text) expect(isGeneratableByte(t), `token ${t}`).toBe(true);
    expect(model.tokenize(model.detokenize(text))).toEqual(text);
  });
});
