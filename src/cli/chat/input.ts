/**
 * Where `kvkeep chat` reads its lines from. On a terminal: a line editor (Node's readline,
 * with the session's earlier lines as history) for each message, and raw keys while a reply
 * streams, so Ctrl-C stops the reply instead of the program (keys typed meanwhile are
 * dropped, not echoed into the reply). A Ctrl-C at an empty prompt right after another one
 * (at the prompt or during the reply it stopped) ends the chat, as in Node's REPL. Without a terminal: one message per line of stdin,
 * so a chat can be scripted (`printf 'hi\n/exit\n' | kvkeep chat …`).
 */
import { createInterface, type Interface } from "node:readline";
import type { CliOutput } from "../io.js";

export interface ChatInputSource {
  /** True on a terminal. */
  readonly interactive: boolean;
  /** The next line (without its line break), or null at the end (Ctrl-D, end of input). */
  next(): Promise<string | null>;
  /** While a reply streams: `onInterrupt` on Ctrl-C. Returns the function that stops watching. */
  duringReply(onInterrupt: () => void): () => void;
  close(): void;
}

/** stdin as a terminal can be: Node's `tty.ReadStream` has `setRawMode`. */
type TerminalStdin = NodeJS.ReadableStream & { isTTY?: boolean | undefined; setRawMode?: (raw: boolean) => unknown };

const CTRL_C = 0x03;

/** Lines typed on a terminal (see the file comment). */
export class TerminalInput implements ChatInputSource {
  readonly interactive = true;
  readonly #stdin: TerminalStdin;
  readonly #out: CliOutput;
  readonly #prompt: string;
  /** Lines typed so far, newest first (readline's order), offered again with the up arrow. */
  #history: string[] = [];
  #closed = false;
  /** The line editor waiting for a line, if any (closed by `close`: the chat is ending). */
  #editor: Interface | null = null;
  /** The last key was a Ctrl-C (no line entered since): one more at an empty prompt quits. */
  #interruptArmed = false;

  constructor(stdin: TerminalStdin, out: CliOutput, prompt: string) {
    this.#stdin = stdin;
    this.#out = out;
    this.#prompt = prompt;
  }

  next(): Promise<string | null> {
    if (this.#closed) return Promise.resolve(null);
    // A fresh line editor per line: closed while a reply streams, so it neither echoes keys
    // into the reply nor takes Ctrl-C for itself.
    const rl: Interface = createInterface({
      input: this.#stdin,
      output: this.#out as NodeJS.WritableStream,
      terminal: true,
      history: [...this.#history],
      historySize: 1000,
      removeHistoryDuplicates: true,
      prompt: this.#prompt,
    });
    this.#editor = rl;
    return new Promise((resolve) => {
      let settled = false;
      const settle = (line: string | null): void => {
        if (settled) return;
        settled = true;
        this.#history = [...(rl as unknown as { history: string[] }).history];
        this.#editor = null;
        rl.close();
        resolve(line);
      };
      rl.on("line", (line) => {
        this.#interruptArmed = false;
        settle(line);
      });
      rl.on("close", () => settle(null)); // Ctrl-D on an empty line, or the terminal went away
      rl.on("SIGINT", () => {
        // Ctrl-C at the prompt: drop what was typed; on an empty line, quit if the key before
        // was Ctrl-C too, else say how to quit.
        if (rl.line.length > 0) {
          this.#interruptArmed = false;
          this.#out.write("^C\n");
          rl.write(null, { ctrl: true, name: "e" });
          rl.write(null, { ctrl: true, name: "u" });
        } else if (this.#interruptArmed) {
          this.#out.write("^C\n");
          settle(null);
          return;
        } else {
          this.#interruptArmed = true;
          this.#out.write("^C (Ctrl-C again, Ctrl-D or /exit quits)\n");
        }
        rl.prompt();
      });
      rl.prompt();
    });
  }

  duringReply(onInterrupt: () => void): () => void {
    const stdin = this.#stdin;
    const onData = (chunk: Buffer | string): void => {
      const bytes = typeof chunk === "string" ? Buffer.from(chunk) : chunk;
      if (bytes.includes(CTRL_C)) {
        this.#interruptArmed = true;
        onInterrupt();
      }
    };
    stdin.setRawMode?.(true);
    stdin.on("data", onData);
    stdin.resume();
    return () => {
      stdin.off("data", onData);
      stdin.setRawMode?.(false);
      stdin.pause();
    };
  }

  close(): void {
    this.#closed = true;
    this.#editor?.close();
    this.#stdin.setRawMode?.(false);
    this.#stdin.pause();
  }
}

/** One message per line of stdin (no terminal). */
export class LineInput implements ChatInputSource {
  readonly interactive = false;
  readonly #lines: AsyncIterator<string>;
  readonly #rl: Interface;

  constructor(stdin: NodeJS.ReadableStream) {
    this.#rl = createInterface({ input: stdin, terminal: false, crlfDelay: Infinity });
    this.#lines = this.#rl[Symbol.asyncIterator]();
  }

  async next(): Promise<string | null> {
    const { value, done } = await this.#lines.next();
    return done ? null : value;
  }

  /** Without a terminal Ctrl-C is a signal: kvkeep chat handles SIGINT itself. */
  duringReply(): () => void {
    return () => {};
  }

  close(): void {
    this.#rl.close();
  }
}
