/**
 * `kvkeep` — inspect and manage a cache root, or serve a model with it. The commands are the
 * table in commands/index.ts; this file parses the command line strictly, prints help and the
 * version, runs the command and turns what it throws into one line (or one JSON object)
 * on stderr with its exit status: 0 done, 1 failed or found problems, 2 bad usage.
 */
import path from "node:path";
import { kvkeepVersion } from "../store/inspect.js";
import { defaultRoot } from "../store/options.js";
import { didYouMean } from "../suggest.js";
import { parseCommandArgs, splitCommand } from "./args.js";
import { type Command, type CommandContext, TOP_LEVEL_OPTIONS } from "./command.js";
import { commands as defaultCommands } from "./commands/index.js";
import { describeFailure, EXIT_OK, usageError } from "./errors.js";
import { escapeControls } from "./format.js";
import { commandHelp, globalHelp } from "./help.js";
import { type CliIo, processIo } from "./io.js";


const lines = (text: string | readonly string[]): string => (typeof text === "string" ? text : text.join("\n"));

/** Human output, each line with its control characters escaped: a name from a client never writes to the terminal. */
const safeLines = (text: string | readonly string[]): string => (typeof text === "string" ? [text] : text).map(escapeControls).join("\n");

export async function main(argv: readonly string[], io: CliIo = processIo(), commands: readonly Command[] = defaultCommands): Promise<number> {
  // --json is honoured for errors even when parsing fails, if it was given at all.
  let json = argv.includes("--json");
  let commandName: string | undefined;
  try {
    const split = splitCommand(argv, TOP_LEVEL_OPTIONS, (option) => {
      const owners = commands.filter((c) => Object.hasOwn(c.options, option)).map((c) => c.name);
      const names = owners.length <= 2 ? owners.join(" and ") : `${owners.slice(0, -1).join(", ")} and ${owners.at(-1)}`;
      return owners.length === 0 ? "" : ` before the command; it is an option of ${names}: put it after the command name, e.g. kvkeep ${owners[0]} --${option}`;
    });
    commandName = split.command;
    json = split.globals.json === true || json;
    if (split.globals.version) {
      io.stdout.write(json ? `${JSON.stringify({ version: kvkeepVersion() })}\n` : `${kvkeepVersion()}\n`);
      return EXIT_OK;
    }
    const name = split.command === "help" ? split.rest[0] : split.command;
    if (name === undefined) {
      io.stdout.write(`${lines(globalHelp(commands, kvkeepVersion()))}\n`);
      return EXIT_OK;
    }
    const command = commands.find((c) => c.name === name);
    if (!command) {
      throw usageError(`unknown command ${JSON.stringify(name)}${didYouMean(name, commands.map((c) => c.name))}; the commands are ${commands.map((c) => c.name).join(", ")}.`);
    }
    if (split.command === "help" || split.globals.help) {
      if (split.command === "help" && split.rest.length > 1) throw usageError("kvkeep help takes one command name.");
      io.stdout.write(`${lines(commandHelp(command))}\n`);
      return EXIT_OK;
    }
    const parsed = parseCommandArgs(command, split.rest);
    if (parsed.values.help) {
      io.stdout.write(`${lines(commandHelp(command))}\n`);
      return EXIT_OK;
    }
    const values = { ...split.globals, ...parsed.values };
    json = values.json === true;
    const rootOption = values.root;
    if (rootOption === "") throw usageError("--root needs a directory.");
    const ctx: CommandContext = {
      io,
      root: path.resolve(typeof rootOption === "string" ? rootOption : defaultRoot(io.env)),
      json,
      options: values,
      positionals: parsed.positionals,
      print: (value, human) => {
        const text = json ? JSON.stringify(value, null, 2) : safeLines(human());
        if (text !== "") io.stdout.write(`${text}\n`); // nothing to say is no output, not a blank line
      },
      note: (line) => {
        if (!json) io.stderr.write(`${escapeControls(line)}\n`);
      },
    };
    return await command.run(ctx);
  } catch (error) {
    const failure = describeFailure(error);
    const message = failure.message.replace(/\s*\n\s*/g, " ");
    if (json) {
      io.stderr.write(`${JSON.stringify({ error: { code: failure.code, message, exitCode: failure.exitCode } })}\n`);
    } else {
      const where = commandName && commands.some((c) => c.name === commandName) ? `kvkeep ${commandName}` : "kvkeep";
      const hint = failure.code === "USAGE" ? ` See ${where} --help.` : "";
      io.stderr.write(`${where}: ${escapeControls(message)}${hint}\n`);
    }
    return failure.exitCode;
  }
}
