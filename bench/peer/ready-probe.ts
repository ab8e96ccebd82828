/**
 * Where `kvkeep serve`'s time to ready goes: the real `startServer` (src/server/serve.ts) in a
 * fresh process, its steps timed from the process's start. bench/peer.ts bundles this file
 * (packages external, as the CLI's bundle) and runs it with plain node, so module loading costs
 * what it costs a user; prints one JSON line (`ReadyAnatomy`).
 *
 *   node <bundle> '{"modelPath":"…","threads":2,"contextSize":4096,"engineBuild":"auto"}'
 */
import { mkdtempSync, rmSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import type { LlamaBuildChoice } from "../../src/engines/node-llama-cpp/llama-build.js";
import { startServer } from "../../src/server/serve.js";
import type { ServeOptions } from "../../src/server/options.js";

export interface ReadyProbeRequest {
  modelPath: string;
  threads: number;
  contextSize: number;
  engineBuild: LlamaBuildChoice;
}

/** Milliseconds from the process's start to the end of each part, and a few parts on their own. */
export interface ReadyAnatomy {
  /** Node's start and every static import (kvkeep, node-llama-cpp): the module body begins. */
  modulesLoaded: number;
  /** getLlama returned (the binary chosen and loaded). */
  engineStarted: number;
  modelLoaded: number;
  /**
   * The contexts step began. From modelLoaded: the HTTP modules awaited (loaded meanwhile), the
   * store opened, the metrics registry, and node-llama-cpp's resolveChatWrapper (nearly all of it).
   */
  contextsBegan: number;
  /** startServer resolved: contexts created, warm-up turn run, listening. */
  ready: number;
  /** The process's resident memory when ready, MiB. */
  rssMiB: number;
  buildType: string;
}

const request = JSON.parse(process.argv[2]!) as ReadyProbeRequest;
const marks: Partial<ReadyAnatomy> = { modulesLoaded: performance.now() };
const root = mkdtempSync(path.join(os.tmpdir(), "kvkeep-ready-"));
const options: ServeOptions = {
  modelPath: request.modelPath,
  modelsDir: null,
  host: "127.0.0.1",
  port: 0,
  contextSize: request.contextSize,
  parallel: 1,
  maxQueue: 32,
  root,
  apiKeys: [],
  apiKeysFile: null,
  prefixReuse: true,
  maxBytes: null,
  maxBodyBytes: 4 * 1024 ** 2,
  threads: request.threads,
  engineBuild: request.engineBuild,
  cache: true,
  adopt: false,
  json: true,
};
const quiet = { debug() {}, info() {}, warn() {}, error() {} };
const server = await startServer(options, quiet, (step) => {
  if (step.step === "engine" && step.binary) marks.engineStarted = performance.now();
  if (step.step === "load" && step.fraction === 1) marks.modelLoaded ??= performance.now();
  if (step.step === "contexts") marks.contextsBegan = performance.now();
});
marks.ready = performance.now();
marks.rssMiB = process.memoryUsage().rss / 2 ** 20;
marks.buildType = server.engineBuild;
await server.close();
rmSync(root, { recursive: true, force: true });
process.stdout.write(`${JSON.stringify(marks)}\n`);
process.exit(0);
