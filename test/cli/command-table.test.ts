/**
 * One footing for every `kvkeep` command, in this process (main with captured streams): the
 * flag parser, the value grammar, the help generator and the usage error are the same for
 * `serve` as for `gc`, and a command added to the table — here `talk`, an entry shaped like
 * `kvkeep chat` (src/cli/commands/chat.ts) that records what it was given instead of
 * chatting — gets all of it without a line of its own.
 */
import path from "node:path";
import { Readable } from "node:stream";
import { describe, expect, it } from "vitest";
import { parseCommandArgs } from "../../src/cli/args.js";
import { type Command, NO_ARGUMENTS } from "../../src/cli/command.js";
import { commands } from "../../src/cli/commands/index.js";
import { serveCommand } from "../../src/cli/commands/serve.js";
import { main } from "../../src/cli/main.js";
import { listOption, requiredText, textOption } from "../../src/cli/option-values.js";
import { tempDir } from "../helpers/temp-root.js";

interface Run {
  code: number;
  stdout: string;
  stderr: string;
}

async function run(argv: readonly string[], table: readonly Command[] = commands): Promise<Run> {
  const out = { stdout: "", stderr: "" };
  const io = {
    stdin: Readable.from([]),
    stdout: { write: (t: string) => (out.stdout += t), isTTY: false },
    stderr: { write: (t: string) => (out.stderr += t), isTTY: false },
    env: { ...process.env, KVKEEP_DIR: "" },
  };
  const code = await main(argv, io, table);
  return { code, ...out };
}

/** What the `kvkeep talk` entry's run was given, by the table's machinery alone. */
const given: Array<{ modelPath: string; session: string | undefined; root: string; json: boolean }> = [];

const talkCommand: Command = {
  name: "talk",
  summary: "talk to a local model in the terminal; the conversation keeps its KV cache",
  usage: "kvkeep talk --model PATH [--session NAME] [--root DIR]",
  description: "A conversation with a local model on the terminal, resumed from its cache.",
  options: {
    model: { type: "string", value: "PATH", help: "the GGUF model (required)" },
    session: { type: "string", value: "NAME", help: "the conversation to resume (default: a new one)" },
  },
  positionals: NO_ARGUMENTS,
  examples: [["kvkeep talk --model ./qwen.gguf --session work", "resume the conversation 'work'"]],
  async run(ctx) {
    const modelPath = requiredText(ctx.options, "model", "a GGUF model file");
    given.push({ modelPath, session: textOption(ctx.options, "session"), root: ctx.root, json: ctx.json });
    return 0;
  },
};
const withTalk = [...commands, talkCommand];

describe("a command added to the table", () => {
  it("gets its typed flags, the global --root and --json, before or after its name", async () => {
    const root = tempDir();
    given.length = 0;
    expect((await run(["--json", "talk", "--model", "m.gguf", "--session", "work", "--root", root], withTalk)).code).toBe(0);
    expect((await run(["--root", root, "talk", "--model=m.gguf"], withTalk)).code).toBe(0);
    expect(given).toEqual([
      { modelPath: "m.gguf", session: "work", root: path.resolve(root), json: true },
      { modelPath: "m.gguf", session: undefined, root: path.resolve(root), json: false },
    ]);
  });

  it("gets strict flags with a did-you-mean, the usage error (exit 2, JSON with --json) and a hint, and never runs on a mistake", async () => {
    given.length = 0;
    const typo = await run(["talk", "--model", "m", "--sesion", "x"], withTalk);
    expect([typo.code, typo.stderr]).toEqual([2, "kvkeep talk: unknown option --sesion (did you mean --session?). See kvkeep talk --help.\n"]);
    const missing = await run(["talk"], withTalk);
    expect([missing.code, missing.stderr]).toEqual([2, "kvkeep talk: --model is required: a GGUF model file. See kvkeep talk --help.\n"]);
    const asJson = await run(["--json", "talk", "--model"], withTalk);
    expect(asJson.code).toBe(2);
    expect(JSON.parse(asJson.stderr)).toEqual({ error: { code: "USAGE", message: "--model needs a value (--model PATH).", exitCode: 2 } });
    expect((await run(["talk", "--model", "m", "extra"], withTalk)).stderr).toBe('kvkeep talk: unexpected argument "extra": kvkeep talk takes none. See kvkeep talk --help.\n');
    expect((await run(["tlak"], withTalk)).stderr).toMatch(/^kvkeep: unknown command "tlak" \(did you mean "talk"\?\)/);
    expect(given).toEqual([]);
  });

  it("gets its --help from its entry, in the format of every command, and a line in kvkeep --help", async () => {
    const help = await run(["talk", "--help"], withTalk);
    expect(help.code).toBe(0);
    expect(help.stdout.split("\n")).toEqual([
      "Usage: kvkeep talk --model PATH [--session NAME] [--root DIR]",
      "",
      "A conversation with a local model on the terminal, resumed from its cache.",
      "",
      "Options:",
      "      --model PATH    the GGUF model (required)",
      "      --session NAME  the conversation to resume (default: a new one)",
      "",
      "Global options:",
      "      --root DIR  the cache root (default: $KVKEEP_DIR, else $XDG_CACHE_HOME/kvkeep, else ~/.cache/kvkeep)",
      "      --json      print results as JSON on stdout, and errors as JSON on stderr",
      "  -h, --help      show help (for a command: kvkeep <command> --help)",
      "",
      "Examples:",
      "  kvkeep talk --model ./qwen.gguf --session work",
      "      resume the conversation 'work'",
      "",
    ]);
    expect((await run(["help", "talk"], withTalk)).stdout).toBe(help.stdout);
    expect((await run(["--help", "talk"], withTalk)).stdout).toBe(help.stdout);
    expect((await run(["--help"], withTalk)).stdout).toMatch(/^ {2}talk\s+talk to a local model in the terminal/m);
    expect((await run(["--model", "m", "talk"], withTalk)).stderr).toContain("unknown option --model before the command; it is an option of rm, serve, chat and talk:");
  });
});

describe("serve on the same footing", () => {
  it("kvkeep serve --help, kvkeep help serve and kvkeep --help serve are one generated text, with the size grammar", async () => {
    const help = await run(["serve", "--help"]);
    expect(help.code).toBe(0);
    expect((await run(["help", "serve"])).stdout).toBe(help.stdout);
    expect((await run(["--help", "serve"])).stdout).toBe(help.stdout);
    expect(help.stdout).toMatch(/^Usage: kvkeep serve --model PATH\|hf:URI\|URL \[options\]$/m);
    for (const flag of ["--model PATH|URI", "--models-dir DIR", "--host HOST", "--port N", "--ctx N", "--parallel N", "--max-queue N", "--api-key KEY",
      "--api-keys FILE", "--no-prefix-reuse", "--max-bytes SIZE", "--max-body SIZE", "--threads N", "--no-cache", "--root DIR", "--json", "-h, --help"]) {
      expect(help.stdout, flag).toContain(`${flag} `);
    }
    expect(help.stdout).toContain("Sizes: 512K, 5M, 2G, 1.5T (powers of 1024");
  });

  it("a bad size reads the same in serve as in gc, and both exit 2 before doing anything", async () => {
    const root = tempDir();
    const serve = await run(["serve", "--model", "m.gguf", "--max-bytes", "4X"]);
    const gc = await run(["gc", "--root", root, "--max-bytes", "4X"]);
    expect([serve.code, gc.code]).toEqual([2, 2]);
    expect(serve.stderr.replaceAll("kvkeep serve", "kvkeep gc")).toBe(gc.stderr);
    const negative = await run(["serve", "--model", "m.gguf", "--max-body", "-1"]);
    expect(negative.stderr).toBe("kvkeep serve: --max-body cannot be negative (got -1). See kvkeep serve --help.\n");
  });

  it("repeats --api-key, and a key may be given with = even when it starts with -", () => {
    const { values } = parseCommandArgs(serveCommand, ["--model", "m", "--api-key", "a", "--api-key=-b-"]);
    expect(listOption(values, "api-key")).toEqual(["a", "-b-"]);
  });
});

describe("help and arguments", () => {
  it("--help wins over a missing argument, never over an extra one or an unknown option", async () => {
    expect((await run(["rm", "--help"])).code).toBe(0);
    expect((await run(["serve", "--help"])).code).toBe(0); // --model is required, but not to read the help
    for (const argv of [["scan", "--help", "extra"], ["serve", "--help", "extra"], ["gc", "-h", "--bogus"], ["serve", "-h", "--bogus"]]) {
      expect((await run(argv)).code, argv.join(" ")).toBe(2);
    }
  });
});
