/**
 * `kvkeep chat`, once its flags are ChatOptions (src/cli/commands/chat.ts imports this file
 * only to chat): open the store and the session's transcript, load the model (engine.ts,
 * node-llama-cpp loads only now), then read lines until Ctrl-D, `/exit` or the end of stdin —
 * each message a turn whose reply streams, followed by a line saying how much of the prompt
 * came from the cache and how soon the first token came.
 *
 * Ctrl-C during a reply aborts that turn (the adapter rolls its cache back to the last
 * committed state, the message is not kept) and the chat goes on. Without a terminal Ctrl-C
 * is SIGINT: the turn is aborted the same way and the chat ends (exit 130). SIGTERM and SIGHUP
 * abort a running turn and end the chat; either way the store is closed cleanly.
 */
import { isKvKeepError } from "../../errors.js";
import type { Logger } from "../../logger.js";
import { startupStatus } from "../../server/startup-status.js";
import { openKvCacheStore } from "../../facade/kvkeep-store.js";
import { CliError } from "../errors.js";
import type { CliIo } from "../io.js";
import { Conversation, resolveSystemPrompt, type TurnOutcome } from "./conversation.js";
import { CHAT_HELP_LINES, cacheLine, oneLine, parseChatLine, printable, sessionBanner, type SessionDescription } from "./format.js";
import { type ChatInputSource, LineInput, TerminalInput } from "./input.js";
import { type Transcript, TranscriptFile } from "./transcript.js";

export interface ChatOptions {
  /** What --model gave: a GGUF file, an hf: URI or a URL. */
  readonly modelSpec: string;
  readonly modelsDir: string | null;
  /** The session to keep and resume; null for a conversation kept only while the chat runs. */
  readonly session: string | null;
  /** `--system`: the system prompt (of a new session; a resumed one keeps its own unless given). */
  readonly system: string | undefined;
  readonly contextSize: number | null;
  readonly threads: number;
  readonly maxTokens: number | undefined;
  readonly scope: string | undefined;
  /** The cache root, resolved. */
  readonly root: string;
  readonly adopt: boolean;
  readonly json: boolean;
}

/** What the chat shows: text for a person, or one JSON object per event with --json. */
interface ChatView {
  started(session: SessionDescription, last: Transcript["messages"][number] | null): void;
  note(line: string): void;
  token(piece: string): void;
  replied(outcome: TurnOutcome, turn: number): void;
  interrupted(): void;
  failed(error: unknown): void;
  reset(): void;
  history(transcript: Transcript): void;
  help(): void;
  unknownCommand(word: string): void;
}

class HumanView implements ChatView {
  readonly #io: CliIo;
  #atLineStart = true;

  constructor(io: CliIo) {
    this.#io = io;
  }

  #status(line: string): void {
    // Dim on a terminal: the figures are about the turn, not part of the conversation.
    this.#io.stderr.write(this.#io.stderr.isTTY ? `\x1b[2m${line}\x1b[22m\n` : `${line}\n`);
  }

  #endReply(): void {
    if (!this.#atLineStart) this.#io.stdout.write("\n");
    this.#atLineStart = true;
  }

  started(session: SessionDescription, last: Transcript["messages"][number] | null): void {
    for (const line of sessionBanner(session)) this.#io.stderr.write(`${line}\n`);
    if (last) this.#status(`  last message: ${JSON.stringify(oneLine(printable(last.content), 100))}`);
  }

  note(line: string): void {
    this.#io.stderr.write(`kvkeep chat: ${line}\n`);
  }

  token(piece: string): void {
    if (piece === "") return;
    this.#io.stdout.write(printable(piece));
    this.#atLineStart = piece.endsWith("\n");
  }

  replied(outcome: TurnOutcome): void {
    this.#endReply();
    this.#status(cacheLine(outcome.result.stats));
    if (outcome.saveError) this.note(`warning: the transcript could not be saved (${outcome.saveError.message}); the conversation goes on, but this turn may be missing when the session resumes.`);
  }

  interrupted(): void {
    this.#endReply();
    this.#status("kvkeep: interrupted: the reply was dropped, the conversation goes on from the turn before (Ctrl-C again quits)");
  }

  failed(error: unknown): void {
    this.#endReply();
    const code = isKvKeepError(error) || error instanceof CliError ? ` (${error.code})` : "";
    this.note(`the turn failed${code}: ${(error as Error)?.message ?? String(error)} The message was not kept; /new starts over.`);
  }

  reset(): void {
    this.note("started over: the conversation, its transcript and its cache are gone.");
  }

  history(transcript: Transcript): void {
    const out = this.#io.stdout;
    if (transcript.system !== null) out.write(`[system] ${printable(transcript.system)}\n`);
    if (transcript.messages.length === 0) this.note("no turns yet.");
    for (const m of transcript.messages) out.write(m.role === "user" ? `> ${printable(m.content)}\n` : `${printable(m.content)}\n\n`);
  }

  help(): void {
    for (const line of CHAT_HELP_LINES) this.#io.stderr.write(`${line}\n`);
  }

  unknownCommand(word: string): void {
    this.note(`unknown command ${JSON.stringify(printable(word))}: /help lists them (//text sends a message starting with /).`);
  }
}

class JsonView implements ChatView {
  readonly #io: CliIo;

  constructor(io: CliIo) {
    this.#io = io;
  }

  #emit(value: object): void {
    this.#io.stdout.write(`${JSON.stringify(value)}\n`);
  }

  started(s: SessionDescription): void {
    this.#emit({ event: "start", session: s.name, model: s.modelId, root: s.root, previousTurns: s.previousTurns, scoped: s.scoped });
  }

  note(line: string): void {
    this.#emit({ event: "note", message: line });
  }

  token(): void {}

  replied(outcome: TurnOutcome, turn: number): void {
    this.#emit({ event: "turn", turn, reply: outcome.result.text, stats: outcome.result.stats, transcriptSaved: outcome.saveError === null });
  }

  interrupted(): void {
    this.#emit({ event: "interrupted" });
  }

  failed(error: unknown): void {
    const code = isKvKeepError(error) || error instanceof CliError ? error.code : "INTERNAL";
    this.#emit({ event: "error", code, message: (error as Error)?.message ?? String(error) });
  }

  reset(): void {
    this.#emit({ event: "reset" });
  }

  history(transcript: Transcript): void {
    this.#emit({ event: "history", system: transcript.system, messages: transcript.messages });
  }

  help(): void {
    this.#emit({ event: "help", lines: CHAT_HELP_LINES });
  }

  unknownCommand(word: string): void {
    this.#emit({ event: "error", code: "USAGE", message: `unknown command ${word}` });
  }
}

function packageMissing(error: unknown): boolean {
  return (error as NodeJS.ErrnoException)?.code === "ERR_MODULE_NOT_FOUND" && (error as Error).message.includes("'node-llama-cpp'");
}

const SIGNAL_EXIT: Readonly<Record<string, number>> = { SIGINT: 130, SIGTERM: 143, SIGHUP: 129 };

/** Chat until the input ends; resolves to the exit status. */
export async function chatUntilEnd(options: ChatOptions, io: CliIo): Promise<number> {
  const view: ChatView = options.json ? new JsonView(io) : new HumanView(io);
  const line = (text: string): void => void io.stderr.write(`kvkeep chat: ${text}\n`);
  const logger: Logger = { debug: () => {}, info: () => {}, warn: line, error: line };

  // The root and the session first: a root that is not kvkeep's, or a session open in another
  // chat, is refused before seconds go into loading a model.
  const store = openKvCacheStore({ root: options.root, logger, onRollback: "keep-committed", adopt: options.adopt });
  const cleanups: Array<() => Promise<void> | void> = [() => store.close()];
  const cleanUp = async (): Promise<void> => {
    for (const cleanup of cleanups.reverse()) await cleanup();
  };
  try {
    let file: TranscriptFile | null = null;
    let kept: Transcript | null = null;
    if (options.session !== null) {
      file = new TranscriptFile(store.root, options.session, options.scope, logger);
      await file.lock();
      const lockHeld = file;
      cleanups.push(() => lockHeld.release());
      kept = await file.load();
    }

    let engine;
    try {
      const { loadChatEngine } = await import("./engine.js");
      const status = options.json ? null : startupStatus(io.stderr, "kvkeep chat: ");
      try {
        engine = await loadChatEngine(options, store, logger, (step) => status?.report(step));
      } finally {
        status?.done();
      }
    } catch (error) {
      if (packageMissing(error)) throw new CliError("PACKAGE_MISSING", "needs the package 'node-llama-cpp': npm install node-llama-cpp");
      throw error;
    }
    const loaded = engine;
    cleanups.push(() => loaded.dispose());

    const session = options.session;
    const scope = options.scope;
    const { system, changed } = resolveSystemPrompt(kept, options.system);
    const storage =
      file === null || session === null
        ? null
        : {
            save: (t: Transcript) => file.save(t),
            remove: () => file.remove(),
            deleteCaches: () => store.delete({ kvCacheKey: session, ...(scope !== undefined ? { scope } : {}) }),
          };
    const conversation = new Conversation({
      engine: loaded.adapter,
      session: storage && session !== null ? { name: session, storage } : null,
      scope,
      maxTokens: options.maxTokens,
      transcript: { system, messages: kept?.messages ?? [] },
    });
    if (changed && storage) {
      // The caches hold the old prompt's state: the next turn re-reads the conversation.
      await storage.deleteCaches();
      await storage.save(conversation.transcript);
    }
    view.started(
      { name: session, modelId: loaded.modelId, root: store.root, previousTurns: conversation.turns, scoped: scope !== undefined },
      kept?.messages.at(-2) ?? null,
    );
    if (changed) view.note("the system prompt differs from the one this session had: the new one applies from now on, and the next turn re-reads the conversation.");

    const interactive = io.stdin.isTTY === true;
    const input: ChatInputSource = interactive ? new TerminalInput(io.stdin, io.stdout, "> ") : new LineInput(io.stdin);
    cleanups.push(() => input.close());

    // Signals: abort a running turn; end the chat unless it was Ctrl-C on a terminal.
    let active: AbortController | null = null;
    let endedBy: string | null = null;
    const onSignal = (signal: NodeJS.Signals): void => {
      active?.abort();
      if (signal === "SIGINT" && interactive) return;
      endedBy ??= signal;
      input.close();
    };
    const signals: NodeJS.Signals[] = ["SIGINT", "SIGTERM", "SIGHUP"];
    for (const s of signals) process.on(s, onSignal);
    cleanups.push(() => {
      for (const s of signals) process.off(s, onSignal);
    });

    let failed = false;
    for (;;) {
      const text = endedBy === null ? await input.next() : null;
      if (text === null) break;
      const parsed = parseChatLine(text);
      if (parsed.kind === "empty") continue;
      if (parsed.kind === "unknown-command") {
        view.unknownCommand(parsed.text);
        continue;
      }
      if (parsed.kind === "command") {
        if (parsed.name === "exit") break;
        if (parsed.name === "help") view.help();
        if (parsed.name === "history") view.history(conversation.transcript);
        if (parsed.name === "new") {
          await conversation.reset();
          view.reset();
        }
        continue;
      }
      const controller = new AbortController();
      active = controller;
      const stopWatching = input.duringReply(() => controller.abort());
      try {
        const outcome = await conversation.send(parsed.text, { signal: controller.signal, onToken: (piece) => view.token(piece) });
        view.replied(outcome, conversation.turns);
      } catch (error) {
        if (isKvKeepError(error, "ABORTED") && controller.signal.aborted) view.interrupted();
        else {
          view.failed(error);
          // A script's next lines build on this turn: stop rather than go on without it.
          if (!interactive) {
            failed = true;
            break;
          }
        }
      } finally {
        stopWatching();
        active = null;
      }
    }
    if (endedBy !== null) return SIGNAL_EXIT[endedBy] ?? 1;
    return failed ? 1 : 0;
  } finally {
    await cleanUp();
  }
}
