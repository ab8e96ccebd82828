/** The one help generator: `kvkeep --help` and `kvkeep <command> --help`, rendered from the command table. */
import { type Command, GLOBAL_OPTIONS, type OptionSpec, TOP_LEVEL_OPTIONS } from "./command.js";
import { renderTable } from "./format.js";
import { DURATION_SYNTAX, SIZE_SYNTAX } from "./units.js";

function optionLines(specs: Readonly<Record<string, OptionSpec>>): string[] {
  const rows = Object.entries(specs).map(([name, spec]) => [
    `  ${spec.short ? `-${spec.short}, ` : "    "}--${name}${spec.value ? ` ${spec.value}` : ""}`,
    spec.help,
  ]);
  return renderTable([{ header: "" }, { header: "" }], rows).slice(1);
}

/** Words into lines of at most `width` characters. */
function wrap(text: string, width = 88): string[] {
  const lines: string[] = [];
  let line = "";
  for (const word of text.split(/\s+/).filter(Boolean)) {
    if (line && line.length + 1 + word.length > width) {
      lines.push(line);
      line = word;
    } else line = line ? `${line} ${word}` : word;
  }
  if (line) lines.push(line);
  return lines;
}

function exampleLines(examples: ReadonlyArray<readonly [string, string]>): string[] {
  return examples.flatMap(([line, what]) => [`  ${line}`, `      ${what}`]);
}

export function globalHelp(commands: readonly Command[], version: string): string[] {
  const list = renderTable(
    [{ header: "" }, { header: "" }],
    commands.map((c) => [`  ${c.name}`, c.summary]),
  ).slice(1);
  return [
    `kvkeep ${version} — inspect and manage a kvkeep cache root`,
    "",
    "Usage: kvkeep [--root DIR] [--json] <command> [options]",
    "",
    "Commands:",
    ...list,
    "",
    "Options (before or after the command):",
    ...optionLines(TOP_LEVEL_OPTIONS),
    "",
    SIZE_SYNTAX,
    DURATION_SYNTAX,
    "Exit status: 0 done; 1 failed, or found problems (verify); 2 bad usage (nothing was changed).",
    "",
    "Examples:",
    ...exampleLines([
      ["kvkeep scan", "every cache under the default root, with size, messages and last use"],
      ["kvkeep --root ./cache verify --fix", "check every cache's checksum, remove the damaged ones"],
      ["kvkeep gc --max-bytes 2G --dry-run", "what a sweep down to 2 GiB would evict"],
      ["kvkeep rm chat-42 --model qwen", "remove one conversation's cache for one model"],
    ]),
    "",
    "kvkeep <command> --help shows a command's options and examples.",
  ];
}

/** The grammar lines for the kinds of values a command's options take (SIZE, DURATION). */
function syntaxLines(specs: Readonly<Record<string, OptionSpec>>): string[] {
  const kinds = new Set(Object.values(specs).map((spec) => spec.value));
  return [...(kinds.has("SIZE") ? [SIZE_SYNTAX] : []), ...(kinds.has("DURATION") ? [DURATION_SYNTAX] : [])];
}

export function commandHelp(c: Command): string[] {
  const syntax = syntaxLines(c.options);
  return [
    `Usage: ${c.usage}`,
    "",
    ...wrap(c.description),
    ...(Object.keys(c.options).length > 0 ? ["", "Options:", ...optionLines(c.options)] : []),
    "",
    "Global options:",
    ...optionLines(GLOBAL_OPTIONS),
    ...(syntax.length > 0 ? ["", ...syntax] : []),
    "",
    "Examples:",
    ...exampleLines(c.examples),
  ];
}
