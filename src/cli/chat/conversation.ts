/**
 * One `kvkeep chat` conversation, apart from the terminal and the engine: what each turn sends
 * (the system prompt, the turns so far, the new message), under which cache (`kvCache: NAME`
 * for a named session, auto mode otherwise), and what is kept once a reply is done. A turn
 * that fails or is interrupted changes nothing: its message is not added, the transcript is
 * not written, and the engine adapter rolled its cache back to the last committed state.
 */
import type { CompletionResult } from "../../engines/node-llama-cpp/index.js";
import type { CacheMessage } from "../../types.js";
import type { Transcript } from "./transcript.js";

/** The part of an engine adapter's `completion()` a chat uses (createLlamaCppCompletion's). */
export interface ChatEngine {
  completion(params: {
    history: readonly CacheMessage[];
    kvCache: string | boolean;
    scope?: string | undefined;
    maxTokens?: number | undefined;
    signal?: AbortSignal | undefined;
    onToken?: ((text: string) => void) | undefined;
  }): Promise<CompletionResult>;
}

/** Where a named session keeps its transcript (transcript.ts), and how its caches are dropped. */
export interface SessionStorage {
  save(transcript: Transcript): Promise<void>;
  remove(): Promise<void>;
  /** Remove the session's caches, every model's (store.delete of its key in its scope). */
  deleteCaches(): Promise<void>;
}

export interface ConversationOptions {
  readonly engine: ChatEngine;
  /** A named session (`--session`), kept and resumable; null: a conversation kept only while the chat runs. */
  readonly session: { readonly name: string; readonly storage: SessionStorage } | null;
  readonly scope?: string | undefined;
  readonly maxTokens?: number | undefined;
  /** Where it starts: a resumed session's transcript, or an empty one. */
  readonly transcript: Transcript;
}

/** A reply that was kept, and whether its transcript could be written. */
export interface TurnOutcome {
  readonly result: CompletionResult;
  /** Why the transcript was not saved (the turn is kept in memory and the chat goes on); null when it was. */
  readonly saveError: Error | null;
}

/**
 * The system prompt a session goes on with: the one given (`--system`) when there is one,
 * else the one it was started with; `changed` when a given one differs from the kept one —
 * the caches then hold another prompt's state and are dropped. Pure.
 */
export function resolveSystemPrompt(kept: Transcript | null, given: string | undefined): { system: string | null; changed: boolean } {
  if (given === undefined) return { system: kept?.system ?? null, changed: false };
  return { system: given, changed: kept !== null && kept.system !== given };
}

export class Conversation {
  readonly #options: ConversationOptions;
  #system: string | null;
  #messages: Array<{ role: "user" | "assistant"; content: string }>;

  constructor(options: ConversationOptions) {
    this.#options = options;
    this.#system = options.transcript.system;
    this.#messages = options.transcript.messages.map((m) => ({ role: m.role, content: m.content }));
  }

  /** Completed turns (a message and its reply). */
  get turns(): number {
    return this.#messages.length / 2;
  }

  get transcript(): Transcript {
    return { system: this.#system, messages: this.#messages.map((m) => ({ ...m })) };
  }

  /** What a turn on `text` sends: the system prompt, the turns so far, the new message. */
  historyFor(text: string): CacheMessage[] {
    return [...(this.#system === null ? [] : [{ role: "system", content: this.#system }]), ...this.#messages, { role: "user", content: text }];
  }

  /**
   * One turn: streams the reply through `onToken`, then keeps it (and writes the transcript of
   * a named session). Rejects — keeping nothing — when the engine fails or `signal` aborts.
   */
  async send(text: string, options: { signal?: AbortSignal; onToken?: (piece: string) => void } = {}): Promise<TurnOutcome> {
    const { engine, session, scope, maxTokens } = this.#options;
    const result = await engine.completion({
      history: this.historyFor(text),
      kvCache: session?.name ?? true,
      scope,
      maxTokens,
      signal: options.signal,
      onToken: options.onToken,
    });
    this.#messages.push({ role: "user", content: text }, { role: "assistant", content: result.text });
    let saveError: Error | null = null;
    if (session) {
      try {
        await session.storage.save(this.transcript);
      } catch (error) {
        saveError = error instanceof Error ? error : new Error(String(error));
      }
    }
    return { result, saveError };
  }

  /** Start over: forget the turns, and for a named session remove its transcript and its caches. */
  async reset(): Promise<void> {
    this.#messages = [];
    const session = this.#options.session;
    if (session) {
      await session.storage.remove();
      await session.storage.deleteCaches();
    }
  }
}
