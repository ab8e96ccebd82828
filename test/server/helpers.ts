/**
 * Real `kvkeep serve` processes for the server tests: the kvkeep executable (src/cli/bin.ts)
 * bundled once and started with node as `kvkeep serve` on 127.0.0.1 and a free port, a
 * generated tiny model, the official `openai` client.
 */
import OpenAI from "openai";
import { ensureModel, resolveShape } from "../fixtures/gguf/models.js";
import { bundleFixture, type ChildRun, runChild } from "../helpers/child.js";

export function tinyModelPath(): Promise<string> {
  return ensureModel(resolveShape("tiny"));
}

export interface ServeProcess {
  readonly url: string;
  readonly port: number;
  readonly run: ChildRun;
  /** SIGTERM, then wait for the exit code. */
  stop(): Promise<number | string>;
  /** SIGKILL, then wait for the exit. */
  kill(): Promise<void>;
}

/** Start `kvkeep serve` with `args` (plus --model, --host 127.0.0.1, --port 0 unless given) and wait until it listens. */
export async function startServe(args: string[], env: NodeJS.ProcessEnv = {}): Promise<ServeProcess> {
  const script = await bundleFixture("src/cli/bin.ts");
  const model = await tinyModelPath();
  const defaults = [
    ...(args.includes("--model") ? [] : ["--model", model]),
    ...(args.includes("--host") ? [] : ["--host", "127.0.0.1"]),
    ...(args.includes("--port") ? [] : ["--port", "0"]),
  ];
  const run = runChild(script, ["serve", ...defaults, ...args], env);
  const line = await run.waitForLine((l) => l.includes("listening on http://"), 60_000);
  const url = /listening on (http:\/\/\S+)/.exec(line)![1]!;
  return {
    url,
    port: Number(new URL(url).port),
    run,
    async stop() {
      run.child.kill("SIGTERM");
      return run.exited;
    },
    async kill() {
      run.child.kill("SIGKILL");
      await run.exited;
    },
  };
}

/** The official client on a server; no retries (a 429 must reach the test). */
export function openaiClient(server: { url: string }, apiKey = "unused"): OpenAI {
  return new OpenAI({ baseURL: `${server.url}/v1`, apiKey, maxRetries: 0, timeout: 120_000 });
}

/** The model id a server serves (its /v1/models). */
export async function servedModel(client: OpenAI): Promise<string> {
  const list = await client.models.list();
  return list.data[0]!.id;
}

/**
 * Tokens the cache holds after a turn: its prompt and its reply. A reply cut by
 * max_tokens ends with a token that was sampled but never evaluated into the context.
 */
export function tokensHeldAfter(usage: { prompt_tokens: number; completion_tokens: number }, finishReason: string): number {
  return usage.prompt_tokens + usage.completion_tokens - (finishReason === "length" ? 1 : 0);
}

/** Parse Prometheus text: `name{labels}` → value, for every sample line. */
export function parsePrometheus(text: string): Map<string, number> {
  const samples = new Map<string, number>();
  for (const line of text.split("\n")) {
    if (line === "" || line.startsWith("#")) continue;
    const match = /^([a-zA-Z_:][a-zA-Z0-9_:]*(?:\{[^}]*\})?) (\S+)(?: \d+)?$/.exec(line);
    if (!match) throw new Error(`not a Prometheus sample line: ${JSON.stringify(line)}`);
    const value = Number(match[2]);
    if (Number.isNaN(value) && match[2]!.toLowerCase() !== "nan") throw new Error(`bad sample value in ${JSON.stringify(line)}`);
    samples.set(match[1]!, value);
  }
  return samples;
}
