/** The streams a command talks through (the process's own in `bin.ts`). */
import { createInterface } from "node:readline";
import { Readable } from "node:stream";
import { escapeControls } from "./format.js";

export interface CliOutput {
  write(text: string): unknown;
  readonly isTTY?: boolean | undefined;
  readonly columns?: number | undefined;
}

export interface CliIo {
  readonly stdin: NodeJS.ReadableStream & { readonly isTTY?: boolean | undefined };
  readonly stdout: CliOutput;
  readonly stderr: CliOutput;
  readonly env: NodeJS.ProcessEnv;
}

export function processIo(): CliIo {
  return { stdin: process.stdin, stdout: process.stdout, stderr: process.stderr, env: process.env };
}

/** Ask on stderr, read one line from stdin; true only for "y" or "yes". */
export async function confirm(io: CliIo, question: string): Promise<boolean> {
  const rl = createInterface({ input: io.stdin, output: io.stderr as NodeJS.WritableStream, terminal: false });
  try {
    io.stderr.write(`${escapeControls(question)} [y/N] `);
    const answer = await new Promise<string>((resolve) => {
      rl.once("line", resolve);
      rl.once("close", () => resolve(""));
    });
    return /^\s*y(es)?\s*$/i.test(answer);
  } finally {
    rl.close();
  }
}

/** Streams that discard everything (running a command from code, e.g. in tests); stdin is empty and no terminal. */
export function quietIo(): CliIo {
  const discard: CliOutput = { write: () => true, isTTY: false };
  return { stdin: Readable.from([]), stdout: discard, stderr: discard, env: process.env };
}
