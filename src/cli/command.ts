/**
 * The shape of a `kvkeep` command. Every command is one entry of the table in
 * `commands/index.ts`; parsing, `--help`, `--json` and error output come from here and
 * `main.ts`, so a command only declares its options and does its work.
 */
import type { CliIo } from "./io.js";

export interface OptionSpec {
  type: "boolean" | "string";
  short?: string;
  /** A string option that may be given several times (its value is then a list). */
  multiple?: boolean;
  /** Placeholder for the value in help (`SIZE`, `DIR`). */
  value?: string;
  help: string;
}

export type OptionValues = Record<string, string | boolean | string[] | undefined>;

export interface CommandContext {
  readonly io: CliIo;
  /** The cache root, resolved (from --root, else the default). */
  readonly root: string;
  readonly json: boolean;
  readonly options: OptionValues;
  readonly positionals: readonly string[];
  /** Print a result on stdout: `json` as JSON with --json, else the human lines. */
  print(json: unknown, human: () => string | readonly string[]): void;
  /** A line on stderr (not with --json). */
  note(line: string): void;
}

/** A command whose arguments `main` parses strictly from its declared options. */
export interface ParsedCommand {
  readonly name: string;
  /** One line for the command list. */
  readonly summary: string;
  /** `kvkeep rm <key>... [options]` */
  readonly usage: string;
  /** A few sentences for `kvkeep <name> --help`. */
  readonly description: string;
  readonly options: Readonly<Record<string, OptionSpec>>;
  readonly positionals: { readonly name: string; readonly min: number; readonly max: number };
  /** `[command line, what it does]` */
  readonly examples: ReadonlyArray<readonly [string, string]>;
  run(ctx: CommandContext): Promise<number>;
}

/**
 * A command that parses its own arguments (e.g. `kvkeep serve`, see commands/index.ts):
 * it receives every argument except its own name — global options given before the name
 * included — and handles its own `--help`. Returns the exit status.
 */
export interface RawCommand {
  readonly name: string;
  readonly summary: string;
  readonly usage: string;
  readonly raw: (argv: string[], io: CliIo) => Promise<number>;
}

export type Command = ParsedCommand | RawCommand;

export function isRaw(command: Command): command is RawCommand {
  return "raw" in command;
}

/** Options every parsed command accepts, before or after its name. */
export const GLOBAL_OPTIONS: Readonly<Record<string, OptionSpec>> = {
  root: {
    type: "string",
    value: "DIR",
    help: "the cache root (default: $KVKEEP_DIR, else $XDG_CACHE_HOME/kvkeep, else ~/.cache/kvkeep)",
  },
  json: { type: "boolean", help: "print results as JSON on stdout, and errors as JSON on stderr" },
  help: { type: "boolean", short: "h", help: "show help (for a command: kvkeep <command> --help)" },
};

/** Only before the command name. */
export const TOP_LEVEL_OPTIONS: Readonly<Record<string, OptionSpec>> = {
  ...GLOBAL_OPTIONS,
  version: { type: "boolean", short: "v", help: "print kvkeep's version" },
};
