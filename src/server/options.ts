/**
 * What `kvkeep serve` starts the server with (`ServeOptions`: src/cli/commands/serve.ts fills
 * it from the flags, with the grammar every kvkeep command uses), and the pure rules the
 * server applies to it: an API key's scope, loopback hosts, threads per context.
 */
import { createHash } from "node:crypto";
import type { LlamaBuildChoice } from "../engines/node-llama-cpp/llama-build.js";

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
  /** `--api-keys FILE`: more keys, one per line (read before the server starts, added to `apiKeys`). */
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
  /** `--adopt`: serve from a non-empty directory that is not marked as a kvkeep root, and mark it. */
  adopt: boolean;
  /** `kvkeep --json serve`: the listening line and errors as JSON, no progress lines. */
  json: boolean;
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
