/**
 * The messages of a `kvkeep chat` session, kept beside its KV cache so that starting the chat
 * again with the same `--session` has the conversation to send (the cache holds the model's
 * state, not the text: a turn's history is the transcript plus the new message, and the cache
 * spares re-reading all but the new part).
 *
 * Where: `<root>/.kvkeep/chat/<id>.json`, `<id>` a domain-separated SHA-256 of the session's
 * scope id and name — never the name or the scope in clear, so listing the directory tells
 * nothing about whose conversations these are, and one name in two scopes is two files.
 * Not beside the cache (`<root>/<name>/<model>/`): a cache is per model and config (the
 * system prompt), a conversation is not, and `kvkeep rm`, `gc` and `verify` treat a file
 * they did not write in a cache directory as foreign. `.kvkeep/` is kvkeep's own directory
 * (the root marker, logs, the warmer's state), never taken for a cache.
 *
 * How: JSON, through the facade's `OwnFile` (kvkeep's own files below the root): written
 * atomically and durably (temp, fsync, rename, fsync of the directory), read without following
 * symlinks and bounded in size. While a chat runs it holds `<id>.lock` (a cross-process lock
 * with the native addon), so a second `kvkeep chat` on the same session is refused instead of
 * both writing their own version of the conversation.
 *
 * The transcript is written after each turn's cache was committed: a crash in between leaves
 * the cache one turn ahead of the transcript — never a transcript that claims more than the
 * cache — and the next turn reuses the cache as far as it matches the conversation sent (the
 * node-llama-cpp adapter cuts a state back to where it and the prompt differ).
 */
import { createHash } from "node:crypto";
import path from "node:path";
import { KvKeepError } from "../../errors.js";
import { OwnFile } from "../../facade/own-file.js";
import { INTERNAL_DIR_NAME } from "../../keys/safe-key.js";
import { scopeIdOption } from "../../keys/scope.js";
import type { Logger } from "../../logger.js";
import { CliError } from "../errors.js";

/** What `kvkeep chat` keeps of a conversation. */
export interface Transcript {
  /** The system prompt the conversation was started (or last continued) with; null for none. */
  readonly system: string | null;
  /** The turns so far, oldest first: a user message, then the model's reply, and so on. */
  readonly messages: ReadonlyArray<{ readonly role: "user" | "assistant"; readonly content: string }>;
}

export const TRANSCRIPT_FORMAT = 1;

/** The directory of chat transcripts, in the root's `.kvkeep/`. */
const CHAT_DIR = "chat";

/** A transcript is text a person typed and read: far below this. A larger file is not one of ours. */
const MAX_TRANSCRIPT_BYTES = 64 * 1024 * 1024;

/**
 * The file name (without extension) of a session's transcript: 32 hex chars of SHA-256 over a
 * domain tag, the scope id (empty for the shared space) and the name. Pure.
 */
export function transcriptId(session: string, scope: string | undefined): string {
  const scopeId = scopeIdOption(scope, "--scope") ?? "";
  return createHash("sha256").update(`kvkeep chat transcript v1\0${scopeId}\0${session}`, "utf8").digest("hex").slice(0, 32);
}

/** `<root>/.kvkeep/chat/<id>.json`. Pure. */
export function transcriptPath(root: string, session: string, scope: string | undefined): string {
  return path.join(root, INTERNAL_DIR_NAME, CHAT_DIR, `${transcriptId(session, scope)}.json`);
}

/** The file's text for `transcript`. Pure. */
export function serializeTranscript(transcript: Transcript): string {
  return `${JSON.stringify({ kvkeep: "chat-transcript", format: TRANSCRIPT_FORMAT, system: transcript.system, messages: transcript.messages }, null, 1)}\n`;
}

function unreadable(file: string, why: string): CliError {
  return new CliError(
    "TRANSCRIPT_UNREADABLE",
    `the transcript of this session (${file}) ${why}; nothing was changed. Move the file away to start the session over, or pick another --session.`,
  );
}

/** The transcript in `text` (the contents of `file`); TRANSCRIPT_UNREADABLE when it is not one. Pure. */
export function parseTranscript(text: string, file: string): Transcript {
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch {
    throw unreadable(file, "is not JSON");
  }
  const v = value as { kvkeep?: unknown; format?: unknown; system?: unknown; messages?: unknown };
  if (v === null || typeof v !== "object" || v.kvkeep !== "chat-transcript") throw unreadable(file, "is not a kvkeep chat transcript");
  if (v.format !== TRANSCRIPT_FORMAT) throw unreadable(file, `has format ${JSON.stringify(v.format)}, this kvkeep reads format ${TRANSCRIPT_FORMAT}`);
  if (v.system !== null && typeof v.system !== "string") throw unreadable(file, "has a system prompt that is not text");
  if (!Array.isArray(v.messages)) throw unreadable(file, "has no list of messages");
  const messages = v.messages.map((m: unknown, i: number) => {
    const { role, content } = (m ?? {}) as { role?: unknown; content?: unknown };
    const expected = i % 2 === 0 ? "user" : "assistant";
    if (role !== expected || typeof content !== "string") throw unreadable(file, `has a malformed message ${i + 1} (turns alternate user, assistant)`);
    return { role: expected, content } as const;
  });
  if (messages.length % 2 !== 0) throw unreadable(file, "ends with a message that has no reply");
  return { system: v.system, messages };
}

/** One session's transcript file and its lock (kvkeep's own file below the root: facade/own-file.ts). */
export class TranscriptFile {
  readonly #file: OwnFile;

  constructor(root: string, session: string, scope: string | undefined, logger?: Logger) {
    this.#file = new OwnFile(root, CHAT_DIR, `${transcriptId(session, scope)}.json`, logger);
  }

  get path(): string {
    return this.#file.path;
  }

  /**
   * Take the session's lock for as long as this chat runs. SESSION_IN_USE when another
   * `kvkeep chat` holds it. (With the JS fallback backend locks do not reach other processes.)
   */
  async lock(): Promise<void> {
    if (!(await this.#file.tryLock())) {
      throw new CliError("SESSION_IN_USE", "this session is open in another kvkeep chat; quit that one first, or pick another --session.");
    }
  }

  /** The transcript, or null when the session has none yet. */
  async load(): Promise<Transcript | null> {
    let data;
    try {
      data = await this.#file.read(MAX_TRANSCRIPT_BYTES);
    } catch (error) {
      if (error instanceof KvKeepError) throw unreadable(this.path, `cannot be read (${error.message})`);
      throw error;
    }
    return data === null ? null : parseTranscript(data.toString("utf8"), this.path);
  }

  /** Replace the transcript, atomically and durably. */
  async save(transcript: Transcript): Promise<void> {
    await this.#file.write(serializeTranscript(transcript));
  }

  /** Remove the transcript (the session starts over). */
  async remove(): Promise<void> {
    await this.#file.remove();
  }

  /** Release the lock (the lock file stays: it is reused by the next chat on the session). */
  release(): void {
    this.#file.release();
  }
}
