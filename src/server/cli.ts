/**
 * `kvkeep serve`: the command-line entry (`runServe`). It parses flags strictly, then
 * imports the server lazily — Fastify, prom-client and node-llama-cpp load only to serve —
 * and runs until SIGINT or SIGTERM.
 */
import { promises as fs } from "node:fs";
import type { Logger } from "../logger.js";
import { isLoopbackHost, parseApiKeysFile, parseServeArgs, USAGE, UsageError } from "./options.js";
import { startupStatus, type StatusStream } from "./startup-status.js";

export interface ServeIo {
  stdout: { write(text: string): unknown };
  /** Progress of the start is redrawn in place when this is a terminal. */
  stderr: StatusStream;
}

/** An error line: text, or `{"error":{code,message,exitCode}}` with --json (as every kvkeep command). */
function fail(io: ServeIo, json: boolean, code: string, message: string, exitCode: number, hint = ""): number {
  io.stderr.write(json ? `${JSON.stringify({ error: { code, message, exitCode } })}\n` : `kvkeep serve: ${message}${hint}\n`);
  return exitCode;
}

/** Packages `kvkeep serve` needs besides kvkeep (optional peer dependencies of the library). */
const SERVE_PACKAGES = ["node-llama-cpp", "fastify", "prom-client"];

function missingPackage(error: unknown): string | null {
  if ((error as NodeJS.ErrnoException)?.code !== "ERR_MODULE_NOT_FOUND") return null;
  const message = (error as Error).message;
  return SERVE_PACKAGES.find((name) => message.includes(`'${name}'`)) ?? null;
}

/** Run `kvkeep serve` with `argv` (the arguments after `serve`); resolves to the exit code when the server stops. */
export async function runServe(argv: string[], io: ServeIo = { stdout: process.stdout, stderr: process.stderr }): Promise<number> {
  let options;
  try {
    options = parseServeArgs(argv);
  } catch (error) {
    if (!(error instanceof UsageError)) throw error;
    return fail(io, argv.includes("--json"), "USAGE", error.message, 2, "\nRun 'kvkeep serve --help' for the options.");
  }
  const json = !("help" in options) && options.json;
  if ("help" in options) {
    io.stdout.write(`${USAGE}\n`);
    return 0;
  }
  if (options.apiKeysFile !== null) {
    const file = options.apiKeysFile;
    let text: string;
    try {
      const st = await fs.stat(file);
      if ((st.mode & 0o077) !== 0) {
        io.stderr.write(`kvkeep serve: warning: ${file} holds API keys but other users may read it (chmod 600 ${file}).\n`);
      }
      text = await fs.readFile(file, "utf8");
    } catch (error) {
      return fail(io, json, "USAGE", `--api-keys ${file}: cannot read it (${(error as NodeJS.ErrnoException).code ?? (error as Error).message}).`, 2);
    }
    try {
      options = { ...options, apiKeys: [...new Set([...options.apiKeys, ...parseApiKeysFile(text, file)])] };
    } catch (error) {
      if (!(error instanceof UsageError)) throw error;
      return fail(io, json, "USAGE", error.message, 2);
    }
  }
  const line = (text: string): void => void io.stderr.write(`${text}\n`);
  const logger: Logger = { debug: () => {}, info: line, warn: line, error: line };

  let serve: typeof import("./serve.js");
  try {
    serve = await import("./serve.js");
  } catch (error) {
    const name = missingPackage(error);
    if (!name) throw error;
    return fail(io, json, "PACKAGE_MISSING", `needs the package '${name}': npm install ${SERVE_PACKAGES.join(" ")}`, 1);
  }
  if (!isLoopbackHost(options.host) && options.apiKeys.length === 0) {
    io.stderr.write(`kvkeep serve: warning: listening on ${options.host} without --api-key: anyone who can reach it can use it.\n`);
  }

  let server;
  const status = json ? null : startupStatus(io.stderr, "kvkeep serve: ");
  try {
    server = await serve.startServer(options, logger, (step) => status?.report(step));
  } catch (error) {
    status?.done();
    // Fastify and prom-client load while the model does (serve.ts).
    const name = missingPackage(error);
    if (name) return fail(io, json, "PACKAGE_MISSING", `needs the package '${name}': npm install ${SERVE_PACKAGES.join(" ")}`, 1);
    if (!(error instanceof serve.ServeStartError)) throw error;
    return fail(io, json, "START_FAILED", error.message, 1);
  }
  status?.done();
  if (server.engineHint && !json) io.stderr.write(`kvkeep serve: ${server.engineHint}\n`);
  io.stdout.write(
    json
      ? `${JSON.stringify({ listening: server.url, model: server.modelId, parallel: options.parallel, root: options.cache ? server.root : null, engineBuild: server.engineBuild })}\n`
      : `kvkeep serve: listening on ${server.url} (model ${server.modelId}, ${options.parallel} parallel, ` +
          `${options.cache ? `cache root ${server.root}` : "cache off"})\n`,
  );

  await new Promise<void>((resolve) => {
    const stop = (): void => {
      process.off("SIGINT", stop);
      process.off("SIGTERM", stop);
      resolve();
    };
    process.on("SIGINT", stop);
    process.on("SIGTERM", stop);
  });
  io.stdout.write(json ? `${JSON.stringify({ shuttingDown: true })}\n` : "kvkeep serve: shutting down\n");
  await server.close();
  return 0;
}
