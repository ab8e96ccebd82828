/**
 * The server's pure parts: strict flags, sizes, the slot pool and its queue, the mapping of
 * OpenAI requests, and `kvkeep serve`'s exit codes; and the metrics module on its own registry.
 */
import { Readable } from "node:stream";
import { Registry } from "prom-client";
import { describe, expect, it } from "vitest";
import { parseCommandArgs } from "../../src/cli/args.js";
import { parseApiKeysFile, serveCommand, serveOptions } from "../../src/cli/commands/serve.js";
import { CliError } from "../../src/cli/errors.js";
import { main } from "../../src/cli/main.js";
import { parseSize } from "../../src/cli/units.js";
import { createKvKeepMetrics } from "../../src/metrics/index.js";
import type { ServeOptions } from "../../src/server/options.js";
import { ApiError, type ChatCompletionBody, paramOfPath, toTurnRequest } from "../../src/server/openai.js";
import { modelSpecKind } from "../../src/server/model-source.js";
import { isLoopbackHost, scopeOfApiKey, threadsPerContext } from "../../src/server/options.js";
import { describeStartupStep, type StartupStep, startupStatus } from "../../src/server/startup-status.js";
import { cpuFeatures, describeLlamaBinary, llamaBuildOptions } from "../../src/engines/node-llama-cpp/llama-build.js";
import { QueueAbortedError, QueueFullError, retryAfterSeconds, SlotPool } from "../../src/server/pool.js";
import { parsePrometheus } from "./helpers.js";

/** `kvkeep serve ARGV` up to the start: its flags parsed as main parses every command's, then turned into ServeOptions. */
function parseServeArgs(argv: readonly string[], env: NodeJS.ProcessEnv = process.env): ServeOptions | { help: true } {
  const { values } = parseCommandArgs(serveCommand, argv);
  return values.help ? { help: true } : serveOptions(values, env);
}

/** `kvkeep serve ARGV` run in this process, as bin.ts runs it, on the given output streams. */
function runServe(argv: readonly string[], io: { stdout: { write(t: string): unknown }; stderr: { write(t: string): unknown } }): Promise<number> {
  return main(["serve", ...argv], { stdin: Readable.from([]), env: process.env, ...io });
}

/** The CLI's usage error (exit 2), whichever flag or value was wrong. */
function isUsageError(error: unknown): boolean {
  return error instanceof CliError && error.code === "USAGE" && error.exitCode === 2;
}
const USAGE_ERROR = expect.objectContaining({ name: "CliError", code: "USAGE", exitCode: 2 });

describe("kvkeep serve flags", () => {
  it("parses every flag, with sizes in powers of 1024 and loopback defaults", () => {
    const options = parseServeArgs(
      ["--model", "m.gguf", "--host", "::1", "--port", "0", "--ctx", "2048", "--parallel", "4", "--max-queue", "3", "--root", "/r",
        "--api-key", "k", "--max-bytes", "4G", "--max-body", "512K", "--threads", "2", "--no-cache", "--adopt"],
      {},
    );
    expect(options).toEqual({
      modelPath: "m.gguf", modelsDir: null, host: "::1", port: 0, contextSize: 2048, parallel: 4, maxQueue: 3, root: "/r", apiKeys: ["k"],
      apiKeysFile: null, prefixReuse: true, maxBytes: 4 * 1024 ** 3, maxBodyBytes: 512 * 1024, threads: 2, engineBuild: "auto", cache: false, adopt: true,
      json: false,
    });
    // A directory that is not a kvkeep root is refused unless adopted, as by gc, rm and verify --fix.
    expect(parseServeArgs(["--model", "m.gguf"], {})).toMatchObject({ adopt: false });
    expect(parseServeArgs(["--model", "hf:Qwen/Qwen3-0.6B-GGUF:Q8_0", "--models-dir", "/m", "--json"], {})).toMatchObject({
      modelPath: "hf:Qwen/Qwen3-0.6B-GGUF:Q8_0", modelsDir: "/m", json: true,
    });
    expect(parseServeArgs(["--model", "m.gguf"], { KVKEEP_API_KEY: "from-env" })).toMatchObject({
      host: "127.0.0.1", port: 8080, contextSize: null, parallel: 1, root: null, apiKeys: ["from-env"], maxBytes: null, cache: true,
    });
    expect(parseServeArgs(["--help"])).toEqual({ help: true });
    // Which llama.cpp binary: the flag, else the environment, else auto.
    expect(parseServeArgs(["--model", "m.gguf", "--engine-build", "native"], { KVKEEP_ENGINE_BUILD: "prebuilt" })).toMatchObject({ engineBuild: "native" });
    expect(parseServeArgs(["--model", "m.gguf"], { KVKEEP_ENGINE_BUILD: "prebuilt" })).toMatchObject({ engineBuild: "prebuilt" });
    // Several keys (each a scope), a key file, and reuse across conversations turned off; the
    // environment's key is only the default when no key is given.
    expect(
      parseServeArgs(["--model", "m.gguf", "--api-key", "a", "--api-key", "b", "--api-key", "a", "--api-keys", "/keys", "--no-prefix-reuse"], {
        KVKEEP_API_KEY: "from-env",
      }),
    ).toMatchObject({ apiKeys: ["a", "b"], apiKeysFile: "/keys", prefixReuse: false });
    expect(parseServeArgs(["--model", "m.gguf", "--api-keys", "/keys"], { KVKEEP_API_KEY: "from-env" })).toMatchObject({ apiKeys: [] });
    expect(parseApiKeysFile("# the team\n  key-1  \r\n\nkey-2\n", "f")).toEqual(["key-1", "key-2"]);
    expect(() => parseApiKeysFile("# only a comment\n\n", "f")).toThrow(USAGE_ERROR);
    // The scope of a key: what `printf %s KEY | sha256sum` prints (the key itself reaches no file).
    expect(scopeOfApiKey("abc")).toBe("ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    expect([parseSize("1.5G"), parseSize("100"), parseSize("4GiB"), parseSize("4gb")]).toEqual([1.5 * 1024 ** 3, 100, 4 * 1024 ** 3, 4 * 1024 ** 3]);
  });

  it("refuses unknown flags, positionals, missing values and out-of-range numbers", () => {
    for (const argv of [
      ["--model", "m", "--bogus"],
      ["--model", "m", "extra"],
      ["--model"],
      [],
      ["--model", "m", "--port", "70000"],
      ["--model", "m", "--parallel", "0"],
      ["--model", "m", "--parallel", "2.5"],
      ["--model", "m", "--max-bytes", "4X"],
      ["--model", "m", "--api-key", ""],
      ["--model", "m", "--engine-build", "fast"],
    ]) {
      expect(() => parseServeArgs(argv, {}), argv.join(" ")).toThrow(USAGE_ERROR);
    }
  });

  it("says what an unknown flag was probably meant to be, and refuses a negative size in its own words", () => {
    const message = (argv: string[]): string => {
      try {
        parseServeArgs(argv, {});
      } catch (error) {
        expect(isUsageError(error)).toBe(true);
        return (error as Error).message;
      }
      throw new Error("expected a usage error");
    };
    expect(message(["--model", "m", "--prot", "1"])).toBe("unknown option --prot (did you mean --port?).");
    expect(message(["--modle", "m"])).toBe("unknown option --modle (did you mean --model?).");
    expect(message(["--model", "m", "--max-bytes", "-1"])).toBe("--max-bytes cannot be negative (got -1).");
    expect(message(["--model", "m", "--root", "--json"])).toMatch(/^--root needs a value, not the option --json/);
    expect(message([])).toMatch(/--model is required: a GGUF model file, an hf: URI .* or a URL/);
  });

  it("a --model is a file path unless it has a scheme: hf:, https:, http: (a Windows drive is a path)", () => {
    expect(["hf:Qwen/Qwen3-0.6B-GGUF:Q8_0", "https://example.com/m.gguf", "http://127.0.0.1:1/m.gguf"].map(modelSpecKind)).toEqual(["uri", "uri", "uri"]);
    expect(["./model.gguf", "/models/m.gguf", "m.gguf", "C:\\models\\m.gguf", "dir:with/colon.gguf".slice(4)].map(modelSpecKind)).toEqual(["file", "file", "file", "file", "file"]);
  });

  it("kvkeep serve exits 0 for --help, 2 for a bad flag and 1 for a missing model file, printing a hint", async () => {
    const io = () => {
      const out = { stdout: "", stderr: "" };
      return { out, io: { stdout: { write: (t: string) => (out.stdout += t) }, stderr: { write: (t: string) => (out.stderr += t) } } };
    };
    const help = io();
    expect(await runServe(["--help"], help.io)).toBe(0);
    expect(help.out.stdout).toContain("Usage: kvkeep serve --model PATH");
    const bad = io();
    expect(await runServe(["--model", "m.gguf", "--prot", "1"], bad.io)).toBe(2);
    expect(bad.out.stderr).toMatch(/--prot[\s\S]*kvkeep serve --help/);
    const missing = io();
    expect(await runServe(["--model", "/nonexistent/model.gguf"], missing.io)).toBe(1);
    expect(missing.out.stderr).toContain("no such file");
    // kvkeep --json serve (the CLI forwards its global flags): errors as the other commands print them
    const asJson = io();
    expect(await runServe(["--json", "--model", "/nonexistent/model.gguf"], asJson.io)).toBe(1);
    expect(JSON.parse(asJson.out.stderr)).toEqual({ error: { code: "START_FAILED", message: expect.stringContaining("no such file"), exitCode: 1 } });
    const badJson = io();
    expect(await runServe(["--json", "--prot", "1"], badJson.io)).toBe(2);
    expect(JSON.parse(badJson.out.stderr)).toMatchObject({ error: { code: "USAGE", message: "unknown option --prot (did you mean --port?).", exitCode: 2 } });
  });

  it("knows loopback hosts and shares threads among the contexts", () => {
    expect(["127.0.0.1", "127.1.2.3", "localhost", "::1"].every(isLoopbackHost)).toBe(true);
    expect(["0.0.0.0", "192.168.1.2", "::", "example.com"].some(isLoopbackHost)).toBe(false);
    expect([threadsPerContext(2, 1), threadsPerContext(2, 2), threadsPerContext(2, 8), threadsPerContext(8, 3)]).toEqual([2, 1, 1, 2]);
  });
});

describe("what kvkeep serve says while it starts", () => {
  const steps: StartupStep[] = [
    { step: "download", spec: "hf:a/b:Q8_0", downloadedBytes: 0, totalBytes: 1000 * 1024 },
    ...[150, 160, 420, 990, 1000].map((k): StartupStep => ({ step: "download", spec: "hf:a/b:Q8_0", downloadedBytes: k * 1024, totalBytes: 1000 * 1024 })),
    { step: "engine" },
    { step: "load", file: "b.gguf", bytes: 1000 * 1024, fraction: 0 },
    { step: "load", file: "b.gguf", bytes: 1000 * 1024, fraction: 1 },
    { step: "contexts", count: 2 },
  ];

  it("in a pipe: a line when each step starts, one per 10% of a download, and each step's end with its duration", () => {
    let out = "";
    let clock = 0;
    const status = startupStatus({ write: (t: string) => (out += t), isTTY: false }, "kvkeep serve: ", () => clock);
    for (const s of steps) {
      status.report(s);
      clock += 500;
    }
    status.done();
    expect(out.split("\n")).toEqual([
      "kvkeep serve: downloading hf:a/b:Q8_0: 0 B of 1000 KiB (0%)",
      "kvkeep serve: downloading hf:a/b:Q8_0: 150 KiB of 1000 KiB (15%)",
      "kvkeep serve: downloading hf:a/b:Q8_0: 420 KiB of 1000 KiB (42%)",
      "kvkeep serve: downloading hf:a/b:Q8_0: 990 KiB of 1000 KiB (99%)",
      "kvkeep serve: downloading hf:a/b:Q8_0: 1000 KiB of 1000 KiB (100%), done in 3.0 s",
      "kvkeep serve: starting node-llama-cpp",
      "kvkeep serve: starting node-llama-cpp, done in 0.5 s",
      "kvkeep serve: loading the model b.gguf (1000 KiB): 0%",
      "kvkeep serve: loading the model b.gguf (1000 KiB): 100%, done in 1.0 s",
      "kvkeep serve: creating 2 contexts and warming them up",
      "kvkeep serve: creating 2 contexts and warming them up, done in 0.5 s",
      "",
    ]);
  });

  it("on a terminal: one line per step, redrawn in place at most every 100 ms, cut to the width", () => {
    let out = "";
    let clock = 0;
    const status = startupStatus({ write: (t: string) => (out += t), isTTY: true, columns: 40 }, "kvkeep serve: ", () => clock);
    status.report({ step: "engine" });
    clock += 2000;
    status.report({ step: "load", file: "b.gguf", bytes: 10, fraction: 0 });
    clock += 50;
    status.report({ step: "load", file: "b.gguf", bytes: 10, fraction: 0.5 }); // within 100 ms: not drawn
    clock += 100;
    status.report({ step: "load", file: "b.gguf", bytes: 10, fraction: 1 });
    status.done();
    const frames = out.split("\r").filter(Boolean);
    expect(frames.every((f) => f.replace(/\x1b\[K\n?$/, "").length <= 39)).toBe(true);
    expect(frames).toEqual([
      "kvkeep serve: starting node-llama-cpp\x1b[K",
      "kvkeep serve: starting node-llama-cpp,…\x1b[K\n",
      "kvkeep serve: loading the model b.gguf…\x1b[K",
      "kvkeep serve: loading the model b.gguf…\x1b[K",
      "kvkeep serve: loading the model b.gguf…\x1b[K\n",
    ]);
    expect(describeStartupStep({ step: "load", file: "b.gguf", bytes: 10, fraction: 0.5 })).toBe("loading the model b.gguf (10 B): 50%");
  });

  it("the engine step ends naming the binary node-llama-cpp loaded", () => {
    let out = "";
    const status = startupStatus({ write: (t: string) => (out += t), isTTY: false }, "kvkeep serve: ", () => 0);
    status.report({ step: "engine", build: "native" });
    status.report({ step: "engine", build: "native", binary: "llama.cpp v0.5.0, a build for this machine" });
    status.done();
    expect(out).toBe(
      "kvkeep serve: starting node-llama-cpp (--engine-build native: compiling llama.cpp for this machine first if it has no build yet, minutes)\n" +
        "kvkeep serve: started node-llama-cpp: llama.cpp v0.5.0, a build for this machine, done in 0.0 s\n",
    );
  });
});

describe("which llama.cpp binary", () => {
  const info = "CPU : SSE3 = 1 | AVX = 1 | AVX2 = 1 | AVX512 = 1 | AMX_INT8 = 0 | OPENMP = 1 | ";

  it("says a local build is a build for this machine, with the CPU features it was compiled for, and gives no hint", () => {
    const described = describeLlamaBinary({ buildType: "localBuild", gpu: false, llamaCppRelease: { release: "v0.5.0" }, systemInfo: info });
    expect(described).toEqual({
      line: "llama.cpp v0.5.0, a build for this machine (node-llama-cpp local build), CPU (SSE3 AVX AVX2 AVX512 OPENMP)",
      hint: null,
    });
    expect(cpuFeatures(info)).not.toContain("AMX_INT8");
  });

  it("says when the generic prebuilt binary runs on a CPU, and how to build one for this machine offline", () => {
    const described = describeLlamaBinary({ buildType: "prebuilt", gpu: false, llamaCppRelease: { release: "v0.5.0" }, systemInfo: info });
    expect(described.line).toMatch(/^llama\.cpp v0\.5\.0, node-llama-cpp's generic prebuilt binary, CPU/);
    expect(described.hint).toContain("npx --no node-llama-cpp source download --gpu false");
    expect(described.hint).toContain("--engine-build native");
    // On a GPU the prebuilt binaries are the usual way: no hint.
    expect(describeLlamaBinary({ buildType: "prebuilt", gpu: "cuda", llamaCppRelease: { release: "v0.5.0" }, systemInfo: info }).hint).toBeNull();
  });

  it("asks node-llama-cpp for its default, for a build (compiling one if missing), or for the prebuilt binary only", () => {
    expect(llamaBuildOptions("auto")).toEqual({ build: "auto" });
    expect(llamaBuildOptions("native")).toEqual({ build: "try" });
    // Never compiles, and names cmake options no local build has, so node-llama-cpp skips its local build.
    expect(llamaBuildOptions("prebuilt")).toMatchObject({ build: "never", cmakeOptions: { KVKEEP_SKIP_LOCAL_BUILD: "ON" } });
  });
});

describe("the slot pool", () => {
  it("hands slots out first come, first served, queues up to its bound and refuses past it", async () => {
    const depths: number[] = [];
    const pool = new SlotPool(["a", "b"], 2, (d) => depths.push(d));
    const first = await pool.acquire();
    const second = await pool.acquire();
    const order: string[] = [];
    const third = pool.acquire().then((l) => (order.push(`third:${l.slot}`), l));
    const fourth = pool.acquire().then((l) => (order.push(`fourth:${l.slot}`), l));
    await expect(pool.acquire()).rejects.toBeInstanceOf(QueueFullError);
    expect(pool.queueDepth).toBe(2);
    second.release();
    second.release(); // idempotent: b is handed out once
    first.release();
    const [l3, l4] = await Promise.all([third, fourth]);
    expect(order).toEqual(["third:b", "fourth:a"]);
    expect(depths).toEqual([1, 2, 1, 0]);
    l3.release();
    l4.release();
    expect(new Set([(await pool.acquire()).slot, (await pool.acquire()).slot])).toEqual(new Set(["a", "b"]));
  });

  it("a waiter whose signal aborts leaves the queue and the slot goes to the next one", async () => {
    const pool = new SlotPool(["only"], 4);
    const held = await pool.acquire();
    const controller = new AbortController();
    const gone = pool.acquire(controller.signal);
    const next = pool.acquire();
    controller.abort();
    await expect(gone).rejects.toBeInstanceOf(QueueAbortedError);
    expect(pool.queueDepth).toBe(1);
    held.release();
    expect((await next).slot).toBe("only");
    await expect(pool.acquire(AbortSignal.abort())).rejects.toBeInstanceOf(QueueAbortedError);
  });

  it("suggests a Retry-After from the queue ahead and the recent turn time, between 1 and 60 s", () => {
    expect(retryAfterSeconds(0, 1, 100)).toBe(1);
    expect(retryAfterSeconds(5, 2, 2000)).toBe(6);
    expect(retryAfterSeconds(1000, 1, 5000)).toBe(60);
  });
});

describe("OpenAI requests", () => {
  const base: ChatCompletionBody = { model: "m", messages: [{ role: "user", content: "hi" }] };
  const map = (body: Partial<ChatCompletionBody>, header?: string, cacheEnabled = true) =>
    toTurnRequest({ ...base, ...body }, { modelId: "m", kvCacheHeader: header, cacheEnabled });
  const refused = (body: Partial<ChatCompletionBody>, header?: string): ApiError => {
    try {
      map(body, header);
    } catch (error) {
      expect(error).toBeInstanceOf(ApiError);
      return error as ApiError;
    }
    throw new Error("expected the request to be refused");
  };

  it("maps messages, sampling and the cache choice to the adapter's terms", () => {
    const turn = map({
      messages: [
        { role: "developer", content: "Be brief." },
        { role: "user", content: [{ type: "text", text: "Hel" }, { type: "text", text: "lo" }] },
      ],
      stream: true,
      stream_options: { include_usage: true },
      max_tokens: 10,
      max_completion_tokens: 20,
      temperature: 0.5,
      top_p: 0.9,
      seed: 7,
      stop: "END",
    });
    expect(turn).toEqual({
      history: [{ role: "system", content: "Be brief." }, { role: "user", content: "Hello" }],
      kvCache: true,
      stream: true,
      includeUsage: true,
      maxTokens: 20,
      temperature: 0.5,
      topP: 0.9,
      seed: 7,
      stop: ["END"],
    });
    expect(map({ kv_cache: "chat-1" }, "other").kvCache).toBe("chat-1"); // the body wins
    expect(map({}, "chat-2").kvCache).toBe("chat-2");
    expect(map({ kv_cache: false }).kvCache).toBe(false);
    expect(map({ kv_cache: "chat-1" }, undefined, false).kvCache).toBe(false); // --no-cache
    expect(map({ stream: false, stream_options: { include_usage: true } }).includeUsage).toBe(false);
  });

  it("refuses what it cannot honour with the parameter named", () => {
    expect(refused({ model: "gpt-4o" })).toMatchObject({ status: 404, code: "model_not_found", param: "model" });
    expect(refused({ n: 2 })).toMatchObject({ status: 400, param: "n" });
    expect(refused({ tools: [{ type: "function", function: { name: "two words" } }] })).toMatchObject({ status: 400, param: "tools" });
    expect(refused({ tools: [{ type: "function", function: { name: "f" } }], tool_choice: { type: "function", function: { name: "g" } } })).toMatchObject({
      status: 400,
      param: "tool_choice",
    });
    expect(refused({ frequency_penalty: 0.5 })).toMatchObject({ status: 400, param: "frequency_penalty" });
    expect(map({ frequency_penalty: 0, presence_penalty: null }).kvCache).toBe(true);
    expect(refused({ messages: [{ role: "user", content: "x" }, { role: "tool", content: "x", tool_call_id: "call_1" }] })).toMatchObject({ status: 400, param: "messages" });
    expect(refused({ messages: [{ role: "tool", content: "x" }] })).toMatchObject({ status: 400, param: "messages[0].tool_call_id" });
    expect(refused({ messages: [{ role: "function", content: "x" }] })).toMatchObject({ status: 400, param: "messages[0].role" });
    expect(refused({ messages: [{ role: "user", content: [{ type: "image_url" }] }] })).toMatchObject({ param: "messages[0].content[0].type" });
    expect(refused({ messages: [{ role: "assistant", content: null }] })).toMatchObject({ param: "messages[0].content" });
    expect(refused({ messages: [{ role: "system", content: "only a system prompt" }] })).toMatchObject({ param: "messages" });
    expect(refused({}, "a/b")).toMatchObject({ status: 400, code: "invalid_kv_cache", param: "kv_cache" });
    // Names the adapter refuses are the client's mistake too (they answered 500 with an error log).
    for (const name of ["auto-0123456789abcdef", ".kvkeep", ".scopes", "x\uD800"]) {
      expect(refused({ kv_cache: name }), name).toMatchObject({ status: 400, code: "invalid_kv_cache", param: "kv_cache" });
    }
    expect(refused({ response_format: { type: "json_object" }, tools: [{ type: "function", function: { name: "f" } }] })).toMatchObject({ param: "response_format" });
    expect(refused({ response_format: { type: "json_schema" } })).toMatchObject({ param: "response_format.json_schema" });
  });

  it("names a parameter from a JSON-schema path", () => {
    expect(paramOfPath("/messages/0/role")).toBe("messages[0].role");
    expect(paramOfPath("", "model")).toBe("model");
    expect(paramOfPath("/stop/1")).toBe("stop[1]");
    expect(paramOfPath("")).toBeNull();
  });
});

describe("kvkeep/metrics", () => {
  it("counts hits and misses by source, tokens, latencies, rollbacks and evictions on the given registry", async () => {
    const registry = new Registry();
    const metrics = createKvKeepMetrics({
      registry,
      store: { usage: async () => ({ bytes: 30, count: 2, autoBytes: 10, namedBytes: 20, logicalBytes: 30, sharing: 1, chunkCount: 0, chunkBytes: 0, staleTempBytes: 0 }) },
    });
    const turn = { reusedTokens: 90, evaluatedTokens: 10, completionTokens: 5, ttftMs: 20, loadMs: 3, saveMs: 8, commitMs: 6 };
    metrics.observeTurn({ ...turn, hit: true }); // no source: an older adapter → own
    metrics.observeTurn({ ...turn, hit: true, source: "prefix" });
    metrics.observeTurn({ ...turn, hit: false, reusedTokens: 0, loadMs: 0, source: "foreign" }); // a handler's own label
    metrics.observeTurn({ ...turn, hit: false, reusedTokens: 0, loadMs: 0, source: "none", refused: { reason: "corrupt" } }); // the adapter's stats
    metrics.observeTurn({ ...turn, hit: false, reusedTokens: 0, loadMs: 0, source: "none", refused: { reason: "foreign" } });
    metrics.observeTurn({ ...turn, hit: true, source: "prefix", refused: { reason: "corrupt" } }); // refused, then a prefix reused: a hit
    metrics.observeTurn({ ...turn, hit: false, reusedTokens: 0, loadMs: 0, saveMs: 0 }, { cache: false }); // no hit or miss
    metrics.observeRollback("aborted");
    metrics.observeTurn({ ...turn, hit: true, commitFailure: "no-space" }); // the reply stood, its state did not
    metrics.observeSweep({ evicted: [{ scopeId: null, cacheKey: "k", modelId: "m", configHash: "h", bytes: 1, reason: "idle" }, { scopeId: null, cacheKey: "j", modelId: "m", configHash: "h", bytes: 1, reason: "budget" }], keptBytes: 0 });
    const samples = parsePrometheus(await registry.metrics());
    expect(samples.get('kvkeep_cache_hits_total{source="own"}')).toBe(2);
    expect(samples.get('kvkeep_cache_hits_total{source="prefix"}')).toBe(2);
    expect(samples.get('kvkeep_cache_misses_total{reason="foreign"}')).toBe(2);
    expect(samples.get('kvkeep_cache_misses_total{reason="corrupt"}')).toBe(1);
    expect(samples.get('kvkeep_cache_misses_total{reason="none"}')).toBe(0);
    expect(samples.get("kvkeep_prompt_tokens_reused_total")).toBe(360);
    expect(samples.get("kvkeep_prompt_tokens_evaluated_total")).toBe(80);
    expect(samples.get("kvkeep_completion_tokens_total")).toBe(40);
    expect(samples.get("kvkeep_time_to_first_token_seconds_count")).toBe(8);
    expect(samples.get("kvkeep_cache_load_seconds_count")).toBe(4);
    expect(samples.get("kvkeep_cache_save_seconds_count")).toBe(7);
    expect(samples.get("kvkeep_cache_commit_seconds_sum")).toBeCloseTo(0.042);
    expect(samples.get('kvkeep_turns_rolled_back_total{reason="aborted"}')).toBe(1);
    expect(samples.get('kvkeep_turns_rolled_back_total{reason="no-space"}')).toBe(1);
    expect(samples.get('kvkeep_evictions_total{reason="idle"}')).toBe(1);
    expect(samples.get('kvkeep_evictions_total{reason="budget"}')).toBe(1);
    expect(samples.get('kvkeep_store_bytes{kind="auto"}')).toBe(10);
    expect(samples.get('kvkeep_store_bytes{kind="named"}')).toBe(20);
    expect(() => createKvKeepMetrics({ registry })).toThrow(); // names are fixed: once per registry
  });
});
