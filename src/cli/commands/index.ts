/**
 * THE COMMAND TABLE — adding a command to `kvkeep` is one entry here.
 *
 * A command declares its options, arguments, help text and examples (`Command`, ../command.ts);
 * main.ts parses its arguments strictly (args.ts: unknown options with a did-you-mean, exit
 * 2), prints its `--help` (help.ts), and prints what it throws as one line, or JSON with
 * `--json` (errors.ts). Its `run` reads typed values with option-values.ts (sizes, durations,
 * whole numbers, required and repeated flags: one grammar, units.ts) and does its work.
 * A command with heavy dependencies imports them in `run`, as `serve` and `chat` do
 * (./serve.ts, ./chat.ts), so `kvkeep scan` never loads Fastify or node-llama-cpp.
 *
 * `chat` is the shape of a new command: one file whose entry declares its flags and examples,
 * a pure function from parsed flags to its options (`chatOptions`), and a `run` that imports
 * the work (src/cli/chat/) only when the command runs; then its name in the list below
 * (--root, --json and --help come with every command).
 */
import type { Command } from "../command.js";
import { backendCommand } from "./backend.js";
import { chatCommand } from "./chat.js";
import { gcCommand } from "./gc.js";
import { rmCommand } from "./rm.js";
import { scanCommand } from "./scan.js";
import { serveCommand } from "./serve.js";
import { usageCommand } from "./usage.js";
import { verifyCommand } from "./verify.js";

export const commands: readonly Command[] = [usageCommand, scanCommand, verifyCommand, gcCommand, rmCommand, backendCommand, serveCommand, chatCommand];
