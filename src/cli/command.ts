/**
 * The shape of a `kvkeep` command. Every command, `serve` included, is one entry of the
 * table in `commands/index.ts`; parsing (args.ts), values (option-values.ts), `--help`
 * (help.ts), `--json` and error output (errors.ts, main.ts) come from here, so a command only
 * declares its options and does its work.
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

/**
 * One `kvkeep` command: what it accepts and what it does. `main` parses its arguments
 * strictly from `options` (with the global ones), prints its `--help` from these fields, and
 * turns what `run` throws into one stderr line (or JSON) with an exit status.
 */
export interface Command {
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
  /** Does the work; resolves to the exit status. Throw a `CliError` (errors.ts) to fail. */
  run(ctx: CommandContext): Promise<number>;
}

/** `positionals` of a command that takes options only. */
export const NO_ARGUMENTS: Command["positionals"] = { name: "", min: 0, max: 0 };

/** Options every command accepts, before or after its name. */
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
