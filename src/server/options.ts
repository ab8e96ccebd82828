/** `kvkeep serve`'s flags: strict parsing (node's `util.parseArgs`) and checks. Pure. */
import { createHash } from "node:crypto";
import os from "node:os";
import { parseArgs } from "node:util";
import { LLAMA_BUILD_CHOICES, type LlamaBuildChoice } from "../engines/node-llama-cpp/llama-build.js";
import { didYouMean } from "../suggest.js";

export interface ServeOptions {
  /** What --model gave: a GGUF file path, an `hf:` URI or a URL (model-source.ts resolves it). */
  modelPath: string;
  /** Where hf: URIs and URLs are downloaded to; null = node-llama-cpp's default (~/.node-llama-cpp/models). */
  modelsDir: string | null;
  host: string;
  port: number;
  /** Context size of each sequence; null = the model's training context, at most 4096. */
  contextSize: number | null;
  /** Requests served at once (one engine context each). */
  parallel: number;
  /** Requests that may wait for a free sequence; more get 429. */
  maxQueue: number;
  /** Cache root; null = kvkeep's default root. */
  root: string | null;
  /**
   * The keys a client may send (`Authorization: Bearer KEY`), each its own isolation scope:
   * every `--api-key`, else `$KVKEEP_API_KEY`. Empty with no `apiKeysFile`: no authentication,
   * one user, one (shared) space.
   */
  apiKeys: string[];
  /** `--api-keys FILE`: more keys, one per line (read at start by `loadApiKeysFile`). */
  apiKeysFile: string | null;
  /** False (`--no-prefix-reuse`): a conversation starts only from its own cache, never another's. */
  prefixReuse: boolean;
  /** Disk budget of the auto caches (the store's `maxBytes`); null = the store's default. */
  maxBytes: number | null;
  /** Largest accepted request body. */
  maxBodyBytes: number;
  /** CPU threads shared by the sequences. */
  threads: number;
  /**
   * Which llama.cpp binary node-llama-cpp runs (`--engine-build`, else `$KVKEEP_ENGINE_BUILD`):
   * `auto` (a local build for this machine if one exists, else the prebuilt one), `native`
   * (build one first if missing) or `prebuilt` (src/engines/node-llama-cpp/llama-build.ts).
   */
  engineBuild: LlamaBuildChoice;
  /** Serve without kvkeep (every turn a full prefill): the baseline of `bench/serve.ts`. */
  cache: boolean;
  /** `kvkeep --json serve`: the listening line and errors as JSON, no progress lines. */
  json: boolean;
}

export const USAGE = `Usage: kvkeep serve --model PATH|URI [options]

An OpenAI-compatible server (POST /v1/chat/completions, GET /v1/models, /health, /metrics)
whose conversations keep their KV cache on disk with kvkeep.

Options:
  --model PATH|URI    the model (required): a GGUF file, an hf: URI (hf:Qwen/Qwen3-0.6B-GGUF:Q8_0)
                      or a URL, downloaded once with progress, as node-llama-cpp does
  --models-dir DIR    where URIs are downloaded to (default node-llama-cpp's ~/.node-llama-cpp/models)
  --host HOST         address to bind (default 127.0.0.1; another one exposes the server)
  --port N            port (default 8080; 0 = any free port)
  --ctx N             context size of each sequence in tokens (default: the model's, at most 4096)
  --parallel N        requests served at once, one context each (default 1)
  --max-queue N       requests that may wait for a free sequence; more get 429 (default 32)
  --root DIR          cache root (default $KVKEEP_DIR, else $XDG_CACHE_HOME/kvkeep, else ~/.cache/kvkeep)
  --api-key KEY       require "Authorization: Bearer KEY"; repeat for several clients, each
                      its own scope: no cache of one key is ever seen by another (default
                      $KVKEEP_API_KEY, else none)
  --api-keys FILE     more keys, one per line (blank lines and lines starting with # skipped)
  --no-prefix-reuse   start a conversation only from its own cache, never from another one
                      sharing its opening (reuse never crosses keys in any case)
  --max-bytes SIZE    disk budget of automatic caches, e.g. 4G (default 4G)
  --max-body SIZE     largest request body (default 4M)
  --threads N         CPU threads shared by the sequences (default: the machine's)
  --engine-build auto|native|prebuilt
                      node-llama-cpp's llama.cpp binary: auto = a build for this machine when
                      one exists, else the generic prebuilt one; native = build one first if
                      missing (offline, from the source node-llama-cpp ships; minutes);
                      prebuilt = the prebuilt one (default $KVKEEP_ENGINE_BUILD, else auto)
  --no-cache          serve without kvkeep (every turn evaluates its whole prompt)
  --json              print the listening line and errors as JSON (also as kvkeep --json serve)
  -h, --help          this text
Sizes take K, M, G, T (powers of 1024), optionally followed by B or iB.`;

/** A command-line mistake: printed with a hint, exit code 2. */
export class UsageError extends Error {
  override readonly name = "UsageError";
}

const UNITS: Record<string, number> = { "": 1, K: 1024, M: 1024 ** 2, G: 1024 ** 3, T: 1024 ** 4 };

/** `4G` → 4 GiB; `512M`, `1.5G`, `100K`, `4GiB`, `4GB` and plain bytes are accepted. */
export function parseSize(text: string, flag: string): number {
  const match = /^(\d+(?:\.\d+)?)\s*([KMGT]?)(?:i?B)?$/i.exec(text.trim());
  if (!match) throw new UsageError(`${flag} must be a size such as 512M or 4G (got ${JSON.stringify(text)}).`);
  const bytes = Math.floor(Number(match[1]) * UNITS[match[2]!.toUpperCase()]!);
  if (!Number.isSafeInteger(bytes)) throw new UsageError(`${flag} is too large (got ${text}).`);
  return bytes;
}

function parseInteger(text: string, flag: string, min: number, max: number): number {
  if (!/^\d+$/.test(text.trim())) throw new UsageError(`${flag} must be a whole number (got ${JSON.stringify(text)}).`);
  const n = Number(text);
  if (n < min || n > max) throw new UsageError(`${flag} must be between ${min} and ${max} (got ${n}).`);
  return n;
}

/** Parse `kvkeep serve`'s arguments; `{ help: true }` for --help. Throws `UsageError` on anything unknown or invalid. */
const OPTIONS = {
  model: { type: "string" },
  "models-dir": { type: "string" },
  host: { type: "string" },
  port: { type: "string" },
  ctx: { type: "string" },
  parallel: { type: "string" },
  "max-queue": { type: "string" },
  root: { type: "string" },
  "api-key": { type: "string", multiple: true },
  "api-keys": { type: "string" },
  "no-prefix-reuse": { type: "boolean" },
  "max-bytes": { type: "string" },
  "max-body": { type: "string" },
  threads: { type: "string" },
  "engine-build": { type: "string" },
  "no-cache": { type: "boolean" },
  json: { type: "boolean" },
  help: { type: "boolean", short: "h" },
} as const;

/**
 * Mistakes util.parseArgs reports badly, in our words: an unknown flag (with a did-you-mean)
 * and a value starting with "-" (`--max-bytes -1`: Node calls it "ambiguous").
 */
function checkTokens(argv: readonly string[]): void {
  const { tokens } = parseArgs({ args: [...argv], options: OPTIONS, strict: false, allowPositionals: true, tokens: true });
  for (const token of tokens) {
    if (token.kind !== "option") continue;
    const spec = (OPTIONS as Record<string, { type: string }>)[token.name];
    if (!spec) {
      throw new UsageError(`unknown option ${token.rawName}${didYouMean(`--${token.name}`, Object.keys(OPTIONS).map((n) => `--${n}`), (n) => n)}.`);
    }
    if (spec.type === "string" && !token.inlineValue && token.value?.startsWith("-")) {
      throw new UsageError(
        /^-\d/.test(token.value)
          ? `--${token.name} cannot be negative (got ${token.value}).`
          : `--${token.name} needs a value, not the option ${token.value} (a value starting with "-": --${token.name}=${token.value}).`,
      );
    }
  }
}

export function parseServeArgs(argv: readonly string[], env: NodeJS.ProcessEnv = process.env): ServeOptions | { help: true } {
  checkTokens(argv);
  let parsed;
  try {
    parsed = parseArgs({
      args: [...argv],
      strict: true,
      allowPositionals: false,
      options: OPTIONS,
    });
  } catch (error) {
    throw new UsageError((error as Error).message);
  }
  const v = parsed.values;
  if (v.help) return { help: true };
  if (!v.model) throw new UsageError("--model is required: a GGUF model file, an hf: URI (hf:Qwen/Qwen3-0.6B-GGUF:Q8_0) or a URL.");
  if (v["models-dir"] !== undefined && v["models-dir"].length === 0) throw new UsageError("--models-dir must not be empty.");
  const given = v["api-key"] ?? [];
  if (given.some((key) => key.length === 0)) throw new UsageError("--api-key must not be empty.");
  if (v["api-keys"] !== undefined && v["api-keys"].length === 0) throw new UsageError("--api-keys must name a file.");
  const fromEnv = given.length === 0 && v["api-keys"] === undefined && env.KVKEEP_API_KEY ? [env.KVKEEP_API_KEY] : [];
  if (v.host !== undefined && v.host.length === 0) throw new UsageError("--host must not be empty.");
  if (v.root !== undefined && v.root.length === 0) throw new UsageError("--root must not be empty.");
  const cores = Math.max(1, os.availableParallelism());
  const engineBuild = v["engine-build"] ?? (env.KVKEEP_ENGINE_BUILD || "auto");
  if (!(LLAMA_BUILD_CHOICES as readonly string[]).includes(engineBuild)) {
    const from = v["engine-build"] !== undefined ? "--engine-build" : "$KVKEEP_ENGINE_BUILD";
    throw new UsageError(`${from} must be one of ${LLAMA_BUILD_CHOICES.join(", ")} (got ${JSON.stringify(engineBuild)}).`);
  }
  return {
    modelPath: v.model,
    modelsDir: v["models-dir"] ?? null,
    host: v.host ?? "127.0.0.1",
    port: v.port === undefined ? 8080 : parseInteger(v.port, "--port", 0, 65535),
    contextSize: v.ctx === undefined ? null : parseInteger(v.ctx, "--ctx", 64, 1 << 24),
    parallel: v.parallel === undefined ? 1 : parseInteger(v.parallel, "--parallel", 1, 256),
    maxQueue: v["max-queue"] === undefined ? 32 : parseInteger(v["max-queue"], "--max-queue", 0, 1_000_000),
    root: v.root ?? null,
    apiKeys: [...new Set([...given, ...fromEnv])],
    apiKeysFile: v["api-keys"] ?? null,
    prefixReuse: !v["no-prefix-reuse"],
    maxBytes: v["max-bytes"] === undefined ? null : parseSize(v["max-bytes"], "--max-bytes"),
    maxBodyBytes: v["max-body"] === undefined ? 4 * 1024 ** 2 : parseSize(v["max-body"], "--max-body"),
    threads: v.threads === undefined ? cores : parseInteger(v.threads, "--threads", 1, 4096),
    engineBuild: engineBuild as LlamaBuildChoice,
    cache: !v["no-cache"],
    json: v.json === true,
  };
}

/**
 * The keys of an `--api-keys` file: one per line, surrounding whitespace trimmed, blank lines
 * and lines starting with `#` skipped. Throws `UsageError` for a file without any key.
 */
export function parseApiKeysFile(text: string, file: string): string[] {
  const keys = text
    .split(/\r?\n/)
    .map((line) => line.trim())
    .filter((line) => line.length > 0 && !line.startsWith("#"));
  if (keys.length === 0) throw new UsageError(`--api-keys ${file}: no key in the file (one key per line).`);
  return keys;
}

/**
 * The isolation scope of an API key: the SHA-256 of the key in hex (what
 * `printf %s "$KEY" | sha256sum` prints), so the key itself never reaches the store — and the
 * store writes only a further hash of this (src/keys/scope.ts). `kvkeep rm --scope` takes it.
 */
export function scopeOfApiKey(key: string): string {
  return createHash("sha256").update(key, "utf8").digest("hex");
}

/** Whether `host` binds only this machine's loopback interface. */
export function isLoopbackHost(host: string): boolean {
  return host === "localhost" || host === "::1" || host === "[::1]" || /^127(?:\.\d{1,3}){3}$/.test(host);
}

/**
 * Threads for each of `parallel` contexts sharing `threads`: CPU evaluation is compute-bound,
 * so more threads than cores in total only adds contention.
 */
export function threadsPerContext(threads: number, parallel: number): number {
  return Math.max(1, Math.floor(threads / parallel));
}
