/**
 * The one flag parser of every `kvkeep` command (`serve` included), on Node's
 * `util.parseArgs`: an unknown option (with a did-you-mean), a value given to a flag, a
 * missing value or an extra argument is a USAGE error (exit 2) raised before the command
 * runs, so a typo never reaches a command that deletes or starts a server. Pure.
 */
import { parseArgs, type ParseArgsConfig } from "node:util";
import { didYouMean } from "../suggest.js";
import { type Command, GLOBAL_OPTIONS, type OptionSpec, type OptionValues } from "./command.js";
import { usageError } from "./errors.js";

type Token = NonNullable<ReturnType<typeof parseArgs>["tokens"]>[number];

function parseArgsOptions(specs: Readonly<Record<string, OptionSpec>>): NonNullable<ParseArgsConfig["options"]> {
  const options: NonNullable<ParseArgsConfig["options"]> = {};
  for (const [name, spec] of Object.entries(specs)) {
    options[name] = { type: spec.type, ...(spec.short ? { short: spec.short } : {}), ...(spec.multiple ? { multiple: true } : {}) };
  }
  return options;
}

function optionsList(specs: Readonly<Record<string, OptionSpec>>): string[] {
  return Object.keys(specs).map((name) => `--${name}`);
}

/** Check each option token against `specs`, with a did-you-mean for unknown ones. */
function checkTokens(tokens: readonly Token[], specs: Readonly<Record<string, OptionSpec>>, hint: (name: string) => string = () => ""): void {
  for (const token of tokens) {
    if (token.kind !== "option") continue;
    const spec = Object.hasOwn(specs, token.name) ? specs[token.name] : undefined;
    if (!spec) {
      const known = optionsList(specs);
      throw usageError(`unknown option ${token.rawName}${didYouMean(`--${token.name}`, known, (s) => s)}${hint(token.name)}.`);
    }
    if (spec.type === "string" && token.value === undefined) {
      throw usageError(`--${token.name} needs a value (--${token.name} ${spec.value ?? "VALUE"}).`);
    }
    // Node's strict parse calls a value starting with "-" ambiguous: say what is wrong instead.
    if (spec.type === "string" && !token.inlineValue && token.value?.startsWith("-")) {
      throw usageError(
        /^-\d/.test(token.value)
          ? `--${token.name} cannot be negative (got ${token.value}).`
          : `--${token.name} needs a value, not the option ${token.value} (a value starting with "-": --${token.name}=${token.value}).`,
      );
    }
    if (spec.type === "boolean" && token.inlineValue) {
      throw usageError(`--${token.name} takes no value (got ${token.rawName}=${token.value ?? ""}).`);
    }
  }
}

function strictParse(args: readonly string[], specs: Readonly<Record<string, OptionSpec>>, allowPositionals: boolean): { values: OptionValues; positionals: string[] } {
  try {
    const parsed = parseArgs({ args: [...args], options: parseArgsOptions(specs), strict: true, allowPositionals });
    return { values: parsed.values as OptionValues, positionals: parsed.positionals };
  } catch (error) {
    // What checkTokens let through (e.g. a value that looks like an option: `--model -x`).
    throw usageError((error as Error).message.split("\n")[0]!);
  }
}

export interface SplitArgs {
  /** Global options given before the command name. */
  globals: OptionValues;
  command: string | undefined;
  /** Everything after the command name. */
  rest: string[];
}

/**
 * Find the command name: the first argument that is neither a global option nor its value.
 * `hint` explains an unknown option before it (e.g. a command's option given too early).
 */
export function splitCommand(argv: readonly string[], topLevel: Readonly<Record<string, OptionSpec>>, hint?: (name: string) => string): SplitArgs {
  const { tokens } = parseArgs({ args: [...argv], options: parseArgsOptions(topLevel), strict: false, allowPositionals: true, tokens: true });
  const first = tokens.findIndex((t) => t.kind === "positional");
  const before = first === -1 ? tokens : tokens.slice(0, first);
  checkTokens(before, topLevel, hint);
  const commandIndex = first === -1 ? argv.length : tokens[first]!.index;
  const { values } = strictParse(argv.slice(0, commandIndex), topLevel, false);
  return {
    globals: values,
    command: first === -1 ? undefined : argv[commandIndex],
    rest: argv.slice(commandIndex + 1),
  };
}

/**
 * A command's own arguments (everything after its name), strictly: its options and the
 * global ones, and `min`..`max` positionals. `--help` wins over missing arguments (so
 * `kvkeep rm --help` needs no key), never over a wrong one: an unknown option or an extra
 * argument is refused next to `--help` too.
 */
export function parseCommandArgs(command: Command, args: readonly string[]): { values: OptionValues; positionals: string[] } {
  const specs = { ...GLOBAL_OPTIONS, ...command.options };
  const { tokens } = parseArgs({ args: [...args], options: parseArgsOptions(specs), strict: false, allowPositionals: true, tokens: true });
  checkTokens(tokens, specs);
  const parsed = strictParse(args, specs, true);
  const { max, min, name } = command.positionals;
  const count = parsed.positionals.length;
  if (count > max) {
    const extra = parsed.positionals.slice(max).map((p) => JSON.stringify(p)).join(" ");
    throw usageError(
      max === 0 ? `unexpected argument ${extra}: kvkeep ${command.name} takes none.` : `too many arguments: ${extra} (kvkeep ${command.name} takes at most ${max}).`,
    );
  }
  if (count < min && !parsed.values.help) throw usageError(`missing ${name}.`);
  return parsed;
}
