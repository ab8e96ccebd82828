/**
 * THE COMMAND TABLE — adding a command to `kvkeep` is one entry here.
 *
 * A command declares its options, arguments, help text and examples (`Command`, ../command.ts);
 * main.ts parses its arguments strictly (args.ts: unknown options with a did-you-mean, exit
 * 2), prints its `--help` (help.ts), and prints what it throws as one line, or JSON with
 * `--json` (errors.ts). Its `run` reads typed values with option-values.ts (sizes, durations,
 * whole numbers, required and repeated flags: one grammar, units.ts) and does its work.
 * A command with heavy dependencies imports them in `run`, as `serve` does (./serve.ts), so
 * `kvkeep scan` never loads Fastify or node-llama-cpp.
 *
 * A later `kvkeep chat --model PATH [--session NAME] [--root DIR]` would be one file,
 * ./chat.ts, and its name in the list below (--root, --json and --help come with every command):
 *
 *   export const chatCommand: Command = {
 *     name: "chat",
 *     summary: "talk to a local model in the terminal; the conversation keeps its KV cache",
 *     usage: "kvkeep chat --model PATH [--session NAME] [--root DIR]",
 *     description: "A conversation with a local model on the terminal, resumed from its cache.",
 *     options: {
 *       model: { type: "string", value: "PATH", help: "the GGUF model (required)" },
 *       session: { type: "string", value: "NAME", help: "the conversation to resume (default: a new one)" },
 *     },
 *     positionals: NO_ARGUMENTS,
 *     examples: [["kvkeep chat --model ./qwen.gguf --session work", "resume the conversation 'work'"]],
 *     async run(ctx) {
 *       const modelPath = requiredText(ctx.options, "model", "a GGUF model file");
 *       const session = textOption(ctx.options, "session");
 *       const { chatUntilEnd } = await import("../../chat/cli.js"); // node-llama-cpp loads only to chat
 *       return chatUntilEnd({ modelPath, session, root: ctx.root }, ctx.io);
 *     },
 *   };
 */
import type { Command } from "../command.js";
import { backendCommand } from "./backend.js";
import { gcCommand } from "./gc.js";
import { rmCommand } from "./rm.js";
import { scanCommand } from "./scan.js";
import { serveCommand } from "./serve.js";
import { usageCommand } from "./usage.js";
import { verifyCommand } from "./verify.js";

export const commands: readonly Command[] = [usageCommand, scanCommand, verifyCommand, gcCommand, rmCommand, backendCommand, serveCommand];
