/**
 * THE COMMAND TABLE — adding a command to `kvkeep` is one entry here.
 *
 * A command whose options main.ts should parse (strictly, with --help, --json and error
 * output for free) is a `ParsedCommand` (see ../command.ts and e.g. ./usage.ts).
 *
 * A command that parses its own arguments is a `RawCommand`: it gets every argument except
 * its name (global options given before the name included) and the process's streams, and
 * returns the exit status. Import it lazily so its dependencies load only when it runs.
 * `kvkeep serve` (src/server/cli.ts) registers like this:
 *
 *   {
 *     name: "serve",
 *     summary: "OpenAI-compatible HTTP server on a local model, with kvkeep caches",
 *     usage: "kvkeep serve --model PATH|hf:URI|URL [--models-dir DIR] [--host H] [--port N] [--root DIR] …",
 *     raw: async (argv, io) => (await import("../../server/cli.js")).runServe(argv, io),
 *   },
 */
import type { Command, RawCommand } from "../command.js";
import { backendCommand } from "./backend.js";
import { gcCommand } from "./gc.js";
import { rmCommand } from "./rm.js";
import { scanCommand } from "./scan.js";
import { usageCommand } from "./usage.js";
import { verifyCommand } from "./verify.js";

const serveCommand: RawCommand = {
  name: "serve",
  summary: "an OpenAI-compatible HTTP server on a local model, whose conversations keep their KV caches",
  usage: "kvkeep serve --model PATH|hf:URI|URL [--models-dir DIR] [--host H] [--port N] [--ctx N] [--parallel N] [--root DIR] [--api-key KEY] [--max-bytes SIZE]",
  // Imported when it runs: Fastify, prom-client and node-llama-cpp load only for `serve`.
  raw: async (argv, io) => (await import("../../server/cli.js")).runServe(argv, io),
};

export const commands: readonly Command[] = [usageCommand, scanCommand, verifyCommand, gcCommand, rmCommand, backendCommand, serveCommand];
