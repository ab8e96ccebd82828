/**
 * The servers bench/peer.ts drives, each behind one interface: `kvkeep serve` (a native or the
 * prebuilt node-llama-cpp binary), and llama-server with its defaults (RAM prompt cache) or
 * with a client that saves and restores slot files. Every turn is one streamed request of the
 * official `openai` client; time to first token is measured at the client, from the moment
 * the client starts on the turn (for slot files: before its restore) to the first text chunk.
 */
import { type ChildProcess, spawn } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import OpenAI from "openai";
import { bundleFixture } from "../../test/helpers/child.js";
import { nowMs } from "../lib.js";
import { freePort, type LlamaServerProcess, startLlamaServer } from "./llama-server.js";

export type Message = OpenAI.ChatCompletionMessageParam;

export const REPLY_TOKENS = 32;

/** The settings every server runs with (the issue's: 2 threads, context 4096, one sequence). */
export interface PeerSettings {
  readonly modelPath: string;
  readonly threads: number;
  readonly contextSize: number;
}

export interface Sample {
  ttftMs: number;
  promptTokens: number;
  /** Prompt tokens the server reports it did not evaluate (kvkeep: cached_tokens; llama-server: timings.cache_n). */
  cachedTokens: number;
  /** Slot files only: the restore the client made before the request (0 when none). */
  restoreMs: number;
}

export interface Target {
  readonly name: string;
  start(): Promise<void>;
  /** One turn of conversation `conversation` (its id) with `messages`; returns the reply and the sample. */
  turn(conversation: string, messages: Message[]): Promise<{ reply: string; sample: Sample }>;
  /** SIGKILL (a crash: nothing flushed). */
  kill(): Promise<void>;
  /** Milliseconds from spawn to a 200 from /health, one per start. */
  readonly readyMs: number[];
  /** The server process's resident memory now (VmRSS) and at its peak (VmHWM), MiB. */
  memory(): { rssMiB: number; peakMiB: number };
  /** Kill and delete what it wrote. */
  dispose(): Promise<void>;
}

function procMemory(pid: number): { rssMiB: number; peakMiB: number } {
  const status = readFileSync(`/proc/${pid}/status`, "utf8");
  const field = (name: string): number => Number(new RegExp(`${name}:\\s+(\\d+)`).exec(status)?.[1] ?? Number.NaN) / 1024;
  return { rssMiB: field("VmRSS"), peakMiB: field("VmHWM") };
}

async function waitHealthy(url: string, isDead: () => boolean, stderr: () => string): Promise<void> {
  for (const started = Date.now(); ; ) {
    if (isDead()) throw new Error(`the server exited at start: ${stderr().slice(-2000)}`);
    if (Date.now() - started > 120_000) throw new Error(`the server was not ready after 120 s: ${stderr().slice(-2000)}`);
    try {
      if ((await fetch(`${url}/health`)).ok) return;
    } catch {
      // not listening yet
    }
    await new Promise((r) => setTimeout(r, 10));
  }
}

/** One streamed turn; usage from the final chunk, llama-server's timings when it sends them. */
async function streamTurn(client: OpenAI, model: string, messages: Message[], started: number): Promise<{ reply: string; sample: Sample }> {
  const stream = await client.chat.completions.create({
    model,
    messages,
    max_tokens: REPLY_TOKENS,
    temperature: 0,
    stream: true,
    stream_options: { include_usage: true },
  });
  let ttftMs = Number.NaN;
  let reply = "";
  let promptTokens = Number.NaN;
  let cachedTokens = Number.NaN;
  for await (const chunk of stream) {
    const piece = chunk.choices[0]?.delta.content ?? "";
    if (piece && Number.isNaN(ttftMs)) ttftMs = nowMs() - started;
    reply += piece;
    if (chunk.usage) {
      promptTokens = chunk.usage.prompt_tokens;
      cachedTokens = chunk.usage.prompt_tokens_details?.cached_tokens ?? cachedTokens;
    }
    // llama-server adds its own timings to the last chunk: cache_n is the prompt tokens it reused.
    const timings = (chunk as unknown as { timings?: { cache_n?: number; prompt_n?: number } }).timings;
    if (timings?.cache_n !== undefined) cachedTokens = timings.cache_n;
  }
  return { reply, sample: { ttftMs, promptTokens, cachedTokens, restoreMs: 0 } };
}

/** The model id `kvkeep serve` serves (the file's name); llama-server takes any. */
function modelId(settings: PeerSettings): string {
  return path.basename(settings.modelPath, ".gguf");
}

function clientFor(url: string): OpenAI {
  return new OpenAI({ baseURL: `${url}/v1`, apiKey: "unused", maxRetries: 0, timeout: 600_000 });
}

/** `kvkeep serve` (bundled from src/, so the bench measures the checkout) on its own cache root. */
export function kvkeepTarget(name: string, settings: PeerSettings, engineBuild: "native" | "prebuilt" | "auto"): Target {
  const root = mkdtempSync(path.join(os.tmpdir(), "kvkeep-peer-root-"));
  let child: ChildProcess | null = null;
  let exited: Promise<void> = Promise.resolve();
  let url = "";
  let err = "";
  const readyMs: number[] = [];
  const target: Target = {
    name,
    readyMs,
    async start() {
      const script = await bundleFixture("src/cli/bin.ts");
      const port = await freePort();
      const started = nowMs();
      const args = [
        script, "serve", "--model", settings.modelPath, "--host", "127.0.0.1", "--port", String(port), "--root", root,
        "--ctx", String(settings.contextSize), "--threads", String(settings.threads), "--parallel", "1", "--engine-build", engineBuild,
      ];
      const proc = spawn(process.execPath, args, { stdio: ["ignore", "ignore", "pipe"] });
      child = proc;
      let dead = false;
      exited = new Promise((resolve) => proc.once("exit", () => resolve()));
      void exited.then(() => (dead = true));
      err = "";
      proc.stderr!.setEncoding("utf8").on("data", (chunk: string) => (err = (err + chunk).slice(-20_000)));
      url = `http://127.0.0.1:${port}`;
      await waitHealthy(url, () => dead, () => err);
      readyMs.push(nowMs() - started);
    },
    async turn(_conversation, messages) {
      return streamTurn(clientFor(url), modelId(settings), messages, nowMs());
    },
    async kill() {
      child?.kill("SIGKILL");
      await exited;
      child = null;
    },
    memory: () => procMemory(child!.pid!),
    async dispose() {
      await target.kill();
      rmSync(root, { recursive: true, force: true });
    },
  };
  return target;
}

/** The common prefix, in whole messages, of two conversations. */
function sharedMessages(a: readonly Message[], b: readonly Message[]): number {
  let n = 0;
  while (n < a.length && n < b.length && a[n]!.role === b[n]!.role && a[n]!.content === b[n]!.content) n++;
  return n;
}

/**
 * llama-server as it ships (`--cache-ram` 8192 MiB), or (`slotFiles`) with `--slot-save-path`
 * and a client doing what kvkeep does for its clients: after each turn it saves the slot as
 * that conversation's file; before a turn it restores the saved file sharing the most leading
 * messages with the request (its own conversation's, or another one's with the same system
 * prompt), unless the slot already holds it. llama-server then reuses the common prefix.
 */
export function llamaServerTarget(name: string, settings: PeerSettings, binary: string, slotFiles: boolean): Target {
  const slotDir = mkdtempSync(path.join(os.tmpdir(), "kvkeep-peer-slots-"));
  let server: LlamaServerProcess | null = null;
  /** What each saved file holds: the conversation's messages including the reply. */
  const saved = new Map<string, Message[]>();
  /** The file whose state the slot holds now (null: something no file holds). */
  let holding: string | null = null;
  const readyMs: number[] = [];
  const target: Target = {
    name,
    readyMs,
    async start() {
      const started = nowMs();
      server = await startLlamaServer(binary, [
        "-m", settings.modelPath, "-c", String(settings.contextSize), "-t", String(settings.threads), "-np", "1", "--jinja",
        ...(slotFiles ? ["--slot-save-path", `${slotDir}/`] : []),
      ]);
      readyMs.push(nowMs() - started);
      holding = null;
    },
    async turn(conversation, messages) {
      const started = nowMs();
      let restoreMs = 0;
      if (slotFiles) {
        let best: string | null = null;
        let bestShared = 0;
        for (const [file, held] of saved) {
          const shared = sharedMessages(held, messages);
          if (shared > bestShared || (shared === bestShared && shared > 0 && file === holding)) {
            best = file;
            bestShared = shared;
          }
        }
        if (best !== null && best !== holding) {
          await server!.slot("restore", best);
          holding = best;
          restoreMs = nowMs() - started;
        }
      }
      const result = await streamTurn(clientFor(server!.url), modelId(settings), messages, started);
      result.sample.restoreMs = restoreMs;
      if (slotFiles) {
        const file = `${conversation}.bin`;
        await server!.slot("save", file);
        saved.set(file, [...messages, { role: "assistant", content: result.reply }]);
        holding = file;
      }
      return result;
    },
    async kill() {
      await server?.kill();
      server = null;
      holding = null;
    },
    memory: () => procMemory(server!.pid),
    async dispose() {
      await target.kill();
      rmSync(slotDir, { recursive: true, force: true });
    },
  };
  return target;
}
