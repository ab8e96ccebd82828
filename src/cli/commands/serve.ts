/**
 * `kvkeep serve`: its entry in the command table. Its flags are parsed, checked and shown in
 * `--help` like every command's; `serveOptions` turns them into the server's `ServeOptions`
 * (pure); `run` reads the `--api-keys` file, then imports the server — Fastify, prom-client
 * and node-llama-cpp load only to serve (src/server/cli.ts runs it until SIGINT or SIGTERM).
 */
import { promises as fs } from "node:fs";
import os from "node:os";
import { LLAMA_BUILD_CHOICES, type LlamaBuildChoice } from "../../engines/node-llama-cpp/llama-build.js";
import type { ServeOptions } from "../../server/options.js";
import { type Command, NO_ARGUMENTS, type OptionSpec, type OptionValues } from "../command.js";
import { usageError } from "../errors.js";
import type { CliIo } from "../io.js";
import { integerOption, listOption, requiredText, sizeOption, textOption } from "../option-values.js";
import { ADOPT_OPTION } from "../root.js";

const SERVE_OPTIONS: Readonly<Record<string, OptionSpec>> = {
  model: {
    type: "string",
    value: "PATH|URI",
    help: "the model (required): a GGUF file, an hf: URI (hf:Qwen/Qwen3-0.6B-GGUF:Q8_0) or a URL, downloaded once with progress, as node-llama-cpp does",
  },
  "models-dir": { type: "string", value: "DIR", help: "where URIs are downloaded to (default node-llama-cpp's ~/.node-llama-cpp/models)" },
  host: { type: "string", value: "HOST", help: "address to bind (default 127.0.0.1; another one exposes the server)" },
  port: { type: "string", value: "N", help: "port (default 8080; 0 = any free port)" },
  ctx: { type: "string", value: "N", help: "context size of each sequence in tokens (default: the model's, at most 4096)" },
  parallel: { type: "string", value: "N", help: "requests served at once, one context each (default 1)" },
  "max-queue": { type: "string", value: "N", help: "requests that may wait for a free sequence; more get 429 (default 32)" },
  "api-key": {
    type: "string",
    multiple: true,
    value: "KEY",
    help: 'require "Authorization: Bearer KEY"; repeat for several clients, each its own scope: no cache of one key is ever seen by another (default $KVKEEP_API_KEY, else none)',
  },
  "api-keys": { type: "string", value: "FILE", help: "more keys, one per line (blank lines and lines starting with # skipped)" },
  "no-prefix-reuse": {
    type: "boolean",
    help: "start a conversation only from its own cache, never from another one sharing its opening (reuse never crosses keys in any case)",
  },
  "max-bytes": { type: "string", value: "SIZE", help: "disk budget of automatic caches, e.g. 4G (default 4G)" },
  "max-body": { type: "string", value: "SIZE", help: "largest request body (default 4M)" },
  threads: { type: "string", value: "N", help: "CPU threads shared by the sequences (default: the machine's)" },
  "engine-build": {
    type: "string",
    value: "auto|native|prebuilt",
    help:
      "node-llama-cpp's llama.cpp binary: auto = a build for this machine when one exists, else the generic prebuilt one; " +
      "native = build one first if missing (offline, from the source node-llama-cpp ships; minutes); prebuilt = the prebuilt one " +
      "(default $KVKEEP_ENGINE_BUILD, else auto)",
  },
  "no-cache": { type: "boolean", help: "serve without kvkeep (every turn evaluates its whole prompt)" },
  ...ADOPT_OPTION,
};

/** `--engine-build`, else `$KVKEEP_ENGINE_BUILD`, else `auto`; a USAGE `CliError` for anything else. */
function engineBuildOption(values: OptionValues, env: NodeJS.ProcessEnv): LlamaBuildChoice {
  const given = textOption(values, "engine-build");
  const choice = given ?? (env.KVKEEP_ENGINE_BUILD || "auto");
  if (!(LLAMA_BUILD_CHOICES as readonly string[]).includes(choice)) {
    const from = given !== undefined ? "--engine-build" : "$KVKEEP_ENGINE_BUILD";
    throw usageError(`${from} must be one of ${LLAMA_BUILD_CHOICES.join(", ")} (got ${JSON.stringify(choice)}).`);
  }
  return choice as LlamaBuildChoice;
}

/**
 * The server's options from `kvkeep serve`'s parsed flags (global ones included) and the
 * environment (`KVKEEP_API_KEY`, the key when no `--api-key` or `--api-keys` is given;
 * `KVKEEP_ENGINE_BUILD`, the binary when no `--engine-build` is given).
 * Throws a USAGE `CliError` for a missing model or a bad value. Pure.
 */
export function serveOptions(values: OptionValues, env: NodeJS.ProcessEnv): ServeOptions {
  const modelPath = requiredText(values, "model", "a GGUF model file, an hf: URI (hf:Qwen/Qwen3-0.6B-GGUF:Q8_0) or a URL");
  const modelsDir = textOption(values, "models-dir") ?? null;
  const given = listOption(values, "api-key");
  const apiKeysFile = textOption(values, "api-keys") ?? null;
  const fromEnv = given.length === 0 && apiKeysFile === null && env.KVKEEP_API_KEY ? [env.KVKEEP_API_KEY] : [];
  const host = textOption(values, "host") ?? "127.0.0.1";
  return {
    modelPath,
    modelsDir,
    host,
    port: integerOption(values, "port", { min: 0, max: 65535 }) ?? 8080,
    contextSize: integerOption(values, "ctx", { min: 64, max: 1 << 24 }) ?? null,
    parallel: integerOption(values, "parallel", { min: 1, max: 256 }) ?? 1,
    maxQueue: integerOption(values, "max-queue", { min: 0, max: 1_000_000 }) ?? 32,
    // As given: the store resolves it, and applies the default root when there is none.
    root: typeof values.root === "string" ? values.root : null,
    apiKeys: [...new Set([...given, ...fromEnv])],
    apiKeysFile,
    prefixReuse: values["no-prefix-reuse"] !== true,
    maxBytes: sizeOption(values, "max-bytes") ?? null,
    maxBodyBytes: sizeOption(values, "max-body") ?? 4 * 1024 ** 2,
    threads: integerOption(values, "threads", { min: 1, max: 4096 }) ?? Math.max(1, os.availableParallelism()),
    engineBuild: engineBuildOption(values, env),
    cache: values["no-cache"] !== true,
    adopt: values.adopt === true,
    json: values.json === true,
  };
}

/**
 * The keys of an `--api-keys` file: one per line, surrounding whitespace trimmed, blank lines
 * and lines starting with `#` skipped. A USAGE `CliError` for a file without any key. Pure.
 */
export function parseApiKeysFile(text: string, file: string): string[] {
  const keys = text
    .split(/\r?\n/)
    .map((line) => line.trim())
    .filter((line) => line.length > 0 && !line.startsWith("#"));
  if (keys.length === 0) throw usageError(`--api-keys ${file}: no key in the file (one key per line).`);
  return keys;
}

/** `options` with the keys of its `--api-keys` file added (read now; a warning when others may read it). */
async function withKeysFile(options: ServeOptions, io: CliIo): Promise<ServeOptions> {
  const file = options.apiKeysFile;
  if (file === null) return options;
  let text: string;
  try {
    const st = await fs.stat(file);
    if ((st.mode & 0o077) !== 0) io.stderr.write(`kvkeep serve: warning: ${file} holds API keys but other users may read it (chmod 600 ${file}).\n`);
    text = await fs.readFile(file, "utf8");
  } catch (error) {
    throw usageError(`--api-keys ${file}: cannot read it (${(error as NodeJS.ErrnoException).code ?? (error as Error).message}).`);
  }
  return { ...options, apiKeys: [...new Set([...options.apiKeys, ...parseApiKeysFile(text, file)])] };
}

export const serveCommand: Command = {
  name: "serve",
  summary: "an OpenAI-compatible HTTP server on a local model, whose conversations keep their KV caches",
  usage: "kvkeep serve --model PATH|hf:URI|URL [options]",
  description:
    "An OpenAI-compatible server (POST /v1/chat/completions, GET /v1/models, /health, /metrics) on a local model, whose conversations keep their KV cache on disk with kvkeep. It runs until SIGINT or SIGTERM. With --json the listening line and errors are JSON.",
  options: SERVE_OPTIONS,
  positionals: NO_ARGUMENTS,
  examples: [
    ["kvkeep serve --model ./qwen3-0.6b.gguf", "serve a model file on http://127.0.0.1:8080, caches under the default root"],
    ["kvkeep serve --model hf:Qwen/Qwen3-0.6B-GGUF:Q8_0 --parallel 2", "download the model once, serve two requests at a time"],
    ["kvkeep serve --model m.gguf --host 0.0.0.0 --api-keys keys.txt", "expose it; each key in keys.txt is a client with its own caches"],
  ],
  async run(ctx) {
    const options = await withKeysFile(serveOptions(ctx.options, ctx.io.env), ctx.io);
    // Imported only now: the CLI loads Fastify, prom-client and node-llama-cpp only to serve.
    const { serveUntilStopped } = await import("../../server/cli.js");
    return serveUntilStopped(options, ctx.io);
  },
};
