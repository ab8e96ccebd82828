/**
 * Starting `kvkeep serve`: load the model with node-llama-cpp, open the kvkeep store, build
 * one adapter (one context, one sequence) per parallel slot, warm each up, and listen.
 * Imported lazily by `cli.ts`, so the CLI loads Fastify, prom-client and node-llama-cpp only
 * when it serves.
 */
import { promises as fs } from "node:fs";
import { getLlama, type Llama, LlamaLogLevel, resolveChatWrapper } from "node-llama-cpp";
import { createLlamaCppCompletion, type LlamaCppCompletion } from "../engines/node-llama-cpp/completion.js";
import { modelIdFromModel } from "../engines/node-llama-cpp/fingerprint.js";
import { describeLlamaBinary, llamaBuildOptions } from "../engines/node-llama-cpp/llama-build.js";
import type { Logger } from "../logger.js";
import type { KvKeepMetrics } from "../metrics/index.js";
import { openKvCacheStore } from "../facade/kvkeep-store.js";
import type { CompletionEngine } from "./app.js";
import { loadModelReporting, ModelSourceError, resolveModelSpec } from "./model-source.js";
import { type ServeOptions, threadsPerContext } from "./options.js";
import { SlotPool } from "./pool.js";
import { maxTokenBytesOf } from "./prompt-bounds.js";
import type { StartupStep } from "./startup-status.js";

export interface RunningServer {
  /** `http://host:port` the server listens on. */
  readonly url: string;
  readonly port: number;
  readonly modelId: string;
  readonly root: string;
  /** Which llama.cpp binary node-llama-cpp runs: a build for this machine (`local`) or its generic `prebuilt` one. */
  readonly engineBuild: "local" | "prebuilt";
  /** Set when the generic prebuilt binary runs on a CPU: how to get a build for this machine. */
  readonly engineHint: string | null;
  readonly metrics: KvKeepMetrics;
  /** Abort running turns (they keep their last committed state), stop listening, free the engine. */
  close(): Promise<void>;
}

/** A model-file problem the user can fix: the CLI prints the message without a stack. */
export class ServeStartError extends Error {
  override readonly name = "ServeStartError";
}

/**
 * `onStep` hears each step of the start (download, engine, model load, contexts) for a
 * progress display; `kvkeep serve` shows them on stderr (startup-status.ts).
 */
export async function startServer(options: ServeOptions, logger: Logger, onStep: (step: StartupStep) => void = () => {}): Promise<RunningServer> {
  let resolved;
  try {
    resolved = await resolveModelSpec(options.modelPath, {
      modelsDir: options.modelsDir,
      onDownload: (progress) => onStep({ step: "download", spec: options.modelPath, ...progress }),
    });
  } catch (error) {
    if (error instanceof ModelSourceError) throw new ServeStartError(`--model ${error.message}`);
    throw error;
  }
  const modelPath = resolved.path;
  // The HTTP side (Fastify, prom-client: ~0.1 s of module loading) loads while node-llama-cpp
  // starts and loads the model, much of it on threads of its own.
  const httpModules = Promise.all([import("prom-client"), import("../metrics/index.js"), import("./app.js")]);
  httpModules.catch(() => {}); // awaited below; a failure surfaces there

  onStep({ step: "engine", build: options.engineBuild });
  let llama: Llama;
  try {
    llama = await getLlama({
      ...llamaBuildOptions(options.engineBuild),
      logLevel: LlamaLogLevel.warn,
      maxThreads: options.threads,
      // A native build compiles for minutes: its output goes to stderr (stdout is the listening line).
      progressLogs: options.engineBuild === "native" && !options.json ? "stderr" : false,
    });
  } catch (error) {
    throw new ServeStartError(`node-llama-cpp found no llama.cpp binary it can run (--engine-build ${options.engineBuild}): ${(error as Error).message}`);
  }
  const binary = describeLlamaBinary(llama);
  onStep({ step: "engine", build: options.engineBuild, binary: binary.line });
  const model = await loadModelReporting(
    llama,
    resolved,
    onStep,
    (error) => new ServeStartError(`--model ${options.modelPath}: node-llama-cpp could not load ${modelPath}: ${error.message}`),
  );
  let http: Awaited<typeof httpModules>;
  try {
    http = await httpModules;
  } catch (error) {
    await model.dispose();
    await llama.dispose();
    throw error; // a missing package: cli.ts says which to install
  }
  const [{ Registry, collectDefaultMetrics }, { createKvKeepMetrics }, { buildApp }] = http;
  const modelId = modelIdFromModel(model);
  const store = openKvCacheStore({
    ...(options.root !== null ? { root: options.root } : {}),
    logger,
    // An aborted or failed turn keeps the conversation's last committed state.
    onRollback: "keep-committed",
    adopt: options.adopt,
    ...(options.maxBytes !== null ? { maxBytes: options.maxBytes } : {}),
    // The store's own background sweeps (after commits, at most every 5 min): the metrics
    // count their evictions through store.onEviction.
  });
  // The caches hold every client's conversations: a root others can read is a leak no scope stops.
  const rootStat = await fs.stat(store.root).catch(() => null);
  if (rootStat && (rootStat.mode & 0o077) !== 0) {
    logger.warn(`warning: the cache root ${store.root} is open to other users of this machine (mode ${(rootStat.mode & 0o777).toString(8)}); chmod 700 it`);
  }
  const registry = new Registry();
  collectDefaultMetrics({ register: registry });
  const metrics = createKvKeepMetrics({ registry, store });

  const threads = threadsPerContext(options.threads, options.parallel);
  // Once for every slot: node-llama-cpp picks the wrapper by rendering test chats through the
  // model's Jinja template, 0.1-0.5 s a call (each adapter would otherwise resolve its own).
  const chatWrapper = resolveChatWrapper(model);
  const adapters: LlamaCppCompletion[] = Array.from({ length: options.parallel }, () =>
    createLlamaCppCompletion({
      model,
      store,
      modelId,
      modelPath,
      threads,
      chatWrapper,
      logger,
      prefixReuse: options.prefixReuse,
      ...(options.contextSize !== null ? { contextSize: options.contextSize } : {}),
    }),
  );
  const disposeAll = async (): Promise<void> => {
    await Promise.allSettled(adapters.map((adapter) => adapter.dispose()));
    await store.close(); // waits for a running sweep
    await model.dispose();
    await llama.dispose();
  };

  onStep({ step: "contexts", count: options.parallel });
  try {
    // Warm-up (as llama-server does): each slot creates its context and runs one token now,
    // so a bad --ctx fails at start and the first request's TTFT is not the context's creation.
    for (const adapter of adapters) {
      await adapter.completion({ history: [{ role: "user", content: "warm-up" }], kvCache: false, maxTokens: 1, temperature: 0 });
    }
  } catch (error) {
    await disposeAll();
    throw new ServeStartError(`could not create ${options.parallel} context(s) for the model: ${(error as Error).message}`);
  }

  const pool = new SlotPool<CompletionEngine>(adapters, options.maxQueue, (depth) => metrics.queueDepth.set(depth));
  const { app, abortAll } = buildApp({
    modelId,
    modelCreated: resolved.createdSeconds,
    pool,
    parallel: options.parallel,
    metrics,
    apiKeys: options.apiKeys,
    bodyLimit: options.maxBodyBytes,
    cacheEnabled: options.cache,
    logger,
    host: options.host,
    root: store.root,
    promptBounds: {
      // The adapters' context size (createLlamaCppCompletion's default when --ctx is not given).
      contextSize: options.contextSize ?? Math.min(model.trainContextSize, 4096),
      maxTokenBytes: maxTokenBytesOf((model.fileInfo.metadata as { tokenizer?: { ggml?: { tokens?: unknown } } }).tokenizer?.ggml?.tokens),
    },
  });
  try {
    await app.listen({ host: options.host, port: options.port });
  } catch (error) {
    await disposeAll();
    const code = (error as NodeJS.ErrnoException).code;
    if (code === "EADDRINUSE") throw new ServeStartError(`${options.host}:${options.port} is already in use: pass another --port.`);
    throw new ServeStartError(`could not listen on ${options.host}:${options.port}: ${(error as Error).message}`);
  }
  const address = app.server.address();
  const port = typeof address === "object" && address ? address.port : options.port;
  const host = options.host.includes(":") && !options.host.startsWith("[") ? `[${options.host}]` : options.host;

  let closing: Promise<void> | null = null;
  return {
    url: `http://${host}:${port}`,
    port,
    modelId,
    root: store.root,
    engineBuild: llama.buildType === "localBuild" ? "local" : "prebuilt",
    engineHint: binary.hint,
    metrics,
    close() {
      closing ??= (async () => {
        abortAll("the server is shutting down");
        await app.close();
        await disposeAll();
      })();
      return closing;
    },
  };
}
