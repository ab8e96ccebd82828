/**
 * `kvkeep serve`, once its flags are ServeOptions (src/cli/commands/serve.ts, which imports
 * this file only to serve): import the server lazily — Fastify, prom-client and node-llama-cpp
 * load only now — start it with its progress on stderr, print the listening line, and run
 * until SIGINT or SIGTERM. Failures are thrown as `CliError`s for the CLI to print.
 */
import { CliError } from "../cli/errors.js";
import type { Logger } from "../logger.js";
import { isLoopbackHost, type ServeOptions } from "./options.js";
import { startupStatus, type StatusStream } from "./startup-status.js";

export interface ServeIo {
  stdout: { write(text: string): unknown };
  /** Progress of the start is redrawn in place when this is a terminal. */
  stderr: StatusStream;
}

/** Packages `kvkeep serve` needs besides kvkeep (optional peer dependencies of the library). */
const SERVE_PACKAGES = ["node-llama-cpp", "fastify", "prom-client"];

function missingPackage(error: unknown): string | null {
  if ((error as NodeJS.ErrnoException)?.code !== "ERR_MODULE_NOT_FOUND") return null;
  const message = (error as Error).message;
  return SERVE_PACKAGES.find((name) => message.includes(`'${name}'`)) ?? null;
}

/** Serve with `options` until SIGINT or SIGTERM; resolves to the exit code once the server has stopped. */
export async function serveUntilStopped(options: ServeOptions, io: ServeIo): Promise<number> {
  const json = options.json;
  const line = (text: string): void => void io.stderr.write(`${text}\n`);
  const logger: Logger = { debug: () => {}, info: line, warn: line, error: line };

  let serve: typeof import("./serve.js");
  try {
    serve = await import("./serve.js");
  } catch (error) {
    const name = missingPackage(error);
    if (!name) throw error;
    throw new CliError("PACKAGE_MISSING", `needs the package '${name}': npm install ${SERVE_PACKAGES.join(" ")}`);
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
    if (name) throw new CliError("PACKAGE_MISSING", `needs the package '${name}': npm install ${SERVE_PACKAGES.join(" ")}`);
    if (!(error instanceof serve.ServeStartError)) throw error;
    throw new CliError("START_FAILED", error.message);
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
