/**
 * One turn skeleton for every engine adapter. The skeleton owns what a turn is to kvkeep —
 * the serial queue, the lazy engine and fingerprint, parameter checks, the scope, the config
 * hash, `beginTurn` (priming through the engine), the abort checks, the commit and the
 * rollback in `finally`, the stats and disposal — and asks the engine half (`TurnEngine`,
 * one per adapter) only for what differs between engines: opening, priming, loading,
 * generating and saving. A turn runs:
 *
 *   validate → open (once) → clock starts → engine.begin (render, check) → aborted?
 *   kvCache false: generate(null) → stats
 *   else: session of the call's scope → beginTurn (engine.prime when missing)
 *         → load → aborted? → generate → aborted? → save → mayCommit? → commit → settled
 *         → stats; finally: roll back unless commitTurn ran (it rolls back itself on failure).
 */
import { assertModelId } from "../../keys/safe-key.js";
import { assertScope } from "../../keys/scope.js";
import { messageKeyChain } from "../../keys/auto-key.js";
import { type Logger, silentLogger } from "../../logger.js";
import type { KvCacheStore } from "../../facade/kvkeep-store.js";
import type { CacheMessage, CacheRefusal, ChunkingOptions, KvCacheSession, TurnHandle } from "../../types.js";
import { abortedCompletion, throwIfAborted } from "./abort.js";
import { now } from "./clock.js";
import { type Committed, type CommitReport, commitReply } from "./commit.js";
import { Lazy } from "./lazy.js";
import { turnConfigHash, type TurnParams, validateTurnParams } from "./params.js";
import { SerialQueue } from "./queue.js";
import type { CompletionCommitFailure, CompletionResult, CompletionStats, ReuseSource, ToolCall } from "./stats.js";

/** What a turn starts from: where its reused tokens come from, and what loading them cost. */
export interface Reuse {
  source: ReuseSource;
  /** The cache key of the source; null for `"none"`. */
  sourceKey: string | null;
  /** Time handing the state to the engine (`CompletionStats.loadMs`). */
  loadMs: number;
}

/** A fresh "nothing reused" start (a new object: engines may add their load time to it). */
export function noReuse(): Reuse {
  return { source: "none", sourceKey: null, loadMs: 0 };
}

/** What one generation produced, measured by the engine. */
export interface Generation {
  text: string;
  /** The run ended because the call's signal aborted (the skeleton checks the signal too). */
  aborted: boolean;
  ttftMs: number;
  completionTokens: number;
  finishReason: "stop" | "length";
  promptTokens: number;
  reusedTokens: number;
  /** Where the reused tokens came from, as it turned out: `"none"` when none were reused. */
  reuse: Reuse;
  /** Tokens in the engine's state after the run (kept in the manifest); undefined when unknown. */
  tokenCount: number | undefined;
  /**
   * The message the reply stands for in the next turn's history, which the commit keys the new
   * state by. Default: `{ role: "assistant", content: text }`. (node-llama-cpp: a reply that
   * calls tools is its own kind of message, see engines/node-llama-cpp/messages.ts.)
   */
  reply?: CacheMessage | undefined;
  /** The tools the reply calls (node-llama-cpp with `tools`); absent or empty: none. */
  toolCalls?: readonly ToolCall[] | undefined;
}

/** What the skeleton knows about a call when it asks the engine to begin it. */
export interface TurnCall {
  /** When the call's clock started (`now()`): `ttftMs` counts from here. */
  started: number;
  /** The call's scope: its own, else the adapter's. */
  scope: string | undefined;
  /** The turn's config hash (system prompt + `TurnEngine.configNames`). */
  configHash: string;
}

/** `session.loadState` bound to the call's turn. */
export type TurnLoader = <T>(use: (loadPath: string, tokens: number | null) => Promise<T>, options?: { tokens?: ArrayLike<number> | undefined }) => Promise<T>;

/** One call's engine work, made by `TurnEngine.begin`; the skeleton calls it in the order above. */
export interface EngineTurn {
  /** `primeIfMissing`: write a state holding the prime prefix (the system prompt) to `path`. */
  prime(path: string): Promise<void>;
  /**
   * Make the engine hold the state `turn` starts from (the turn's cache, or a better one).
   * `loadState` hands the turn's committed state over as a loadable path (`session.loadState`:
   * a chunked cache is joined in memory); never load `turn.cachePath` of a chunked cache.
   */
  load(turn: TurnHandle, loadState: TurnLoader): Promise<Reuse>;
  /** Run the prompt and generate the reply; `turn` null: no cache (`kvCache: false`), an empty state. */
  generate(turn: TurnHandle | null, reuse: Reuse): Promise<Generation>;
  /** Write the state to `savePath` (omit when the engine writes it while generating). */
  save?(savePath: string): Promise<void>;
  /** Whether the turn's state may be committed (default: always). False reports `"incomplete"`. */
  mayCommit?(generation: Generation): boolean;
  /** The turn ended: what its commit installed, or null (nothing committed). */
  settled?(committed: Committed | null): void;
}

/** The engine half of an adapter: what the skeleton asks of one engine. */
export interface TurnEngine<P extends TurnParams, O> {
  /** Make what every call needs (a context, a checked model): once, at the first call; again after a failure. */
  open(): Promise<O>;
  /** The fingerprint sessions are opened with: computed once, at the first call that uses a cache. */
  fingerprint(opened: O): Promise<string> | string;
  /** Refuse this engine's own malformed parameters (INVALID_ARGUMENT naming the argument). */
  validate?(params: P): void;
  /**
   * Opt the adapter's sessions into chunked storage (`SessionOptions.chunks`): only for states
   * kvkeep can split (llama.cpp sequence states of attention models). Default: whole files.
   */
  chunking?(opened: O): ChunkingOptions | null;
  /** Names that shape the primed state besides the system prompt (node-llama-cpp: the tools). */
  configNames?(params: P): readonly string[] | undefined;
  /** Start one call (render the prompt, check it fits); throws for input the engine cannot run. */
  begin(opened: O, params: P, call: TurnCall): EngineTurn;
  /** Free what `open` made (at `dispose`, after the last call). */
  close?(opened: O): Promise<void>;
}

export interface CompletionTurnsOptions {
  store: KvCacheStore;
  /** The model id caches are filed under (one safe path component). */
  modelId: string;
  /** The scope of calls that name none. */
  scope?: string | undefined;
  /** Where the adapter logs; also given to its sessions. Default: silent (sessions: the store's). */
  logger?: Logger | undefined;
}

/** The skeleton: one per adapter, driving one `TurnEngine`. */
export class CompletionTurns<P extends TurnParams, O> {
  readonly store: KvCacheStore;
  readonly modelId: string;
  readonly #engine: TurnEngine<P, O>;
  readonly #scope: string | undefined;
  readonly #logger: Logger;
  readonly #sessionLogger: Logger | undefined;
  readonly #queue = new SerialQueue();
  readonly #opened: Lazy<O>;
  readonly #fingerprint: Lazy<string>;

  constructor(engine: TurnEngine<P, O>, options: CompletionTurnsOptions) {
    assertModelId(options.modelId);
    if (options.scope !== undefined) assertScope(options.scope);
    this.#engine = engine;
    this.store = options.store;
    this.modelId = options.modelId;
    this.#scope = options.scope;
    this.#logger = options.logger ?? silentLogger;
    this.#sessionLogger = options.logger;
    this.#opened = new Lazy(() => engine.open());
    this.#fingerprint = new Lazy(async () => engine.fingerprint(await this.#opened.get()));
  }

  /** Run one completion, after the calls queued before it. */
  completion(params: P): Promise<CompletionResult> {
    return this.#queue.run(() => this.#run(params));
  }

  /** Run `work` in the queue, between completions (e.g. a preload into the idle engine). */
  exclusive<T>(work: () => Promise<T>): Promise<T> {
    return this.#queue.run(work);
  }

  /** The opened engine (opening it on first use). */
  open(): Promise<O> {
    return this.#opened.get();
  }

  /** Wait for queued calls, refuse further ones (STORE_CLOSED), then close the engine if it was opened. */
  async dispose(): Promise<void> {
    await this.#queue.close();
    const opened = await this.#opened.peek()?.then(
      (o) => ({ o }),
      () => null,
    );
    if (opened) await this.#engine.close?.(opened.o);
  }

  async #run(params: P): Promise<CompletionResult> {
    validateTurnParams(params);
    this.#engine.validate?.(params);
    const opened = await this.#opened.get();
    // The clock starts once the engine is open: opening is a one-time cost.
    const started = now();
    const { history, signal } = params;
    const scope = params.scope ?? this.#scope;
    const configHash = turnConfigHash(history, this.#engine.configNames?.(params));
    const work = this.#engine.begin(opened, params, { started, scope, configHash });
    throwIfAborted(signal);

    if (params.kvCache === false) {
      const generation = await work.generate(null, noReuse());
      if (generation.aborted) throw abortedCompletion(signal);
      throwIfAborted(signal);
      return resultOf(generation, completionStats(generation, NOTHING_SAVED, null, null));
    }

    // A session per call (cheap: no I/O): the call's scope decides where its caches live.
    const session = this.#session(scope, await this.#fingerprint.get(), this.#engine.chunking?.(opened) ?? null);
    messageKeyChain(history); // once per turn: the session and prefix lookups reuse it (memoised)
    const turn = await session.beginTurn({
      ...(params.kvCache === true ? { kind: "auto" as const, history } : { kind: "custom" as const, customKey: params.kvCache }),
      configHash,
      signal,
      conversationId: params.conversationId,
      primeIfMissing: (path) => work.prime(path),
    });
    let ended = false; // commitTurn ran: it committed, or rolled the turn back itself
    try {
      const reuse = await work.load(turn, (use, options) => session.loadState(turn, use, options));
      throwIfAborted(signal);
      const generation = await work.generate(turn, reuse);
      if (generation.aborted) throw abortedCompletion(signal);
      throwIfAborted(signal);
      const saveStart = now();
      if (work.save) await work.save(turn.savePath);
      let report: CommitReport = { outcome: null, failure: "incomplete", commitMs: 0 };
      if (work.mayCommit?.(generation) ?? true) {
        ended = true;
        report = await commitReply(
          session,
          turn,
          { history, reply: generation.reply ?? { role: "assistant", content: generation.text }, configHash, tokenCount: generation.tokenCount },
          this.#logger,
        );
      }
      const saved = { saveMs: work.save || ended ? now() - saveStart : 0, commitMs: report.commitMs, outcome: report.outcome, failure: report.failure };
      work.settled?.(report.outcome);
      return resultOf(generation, completionStats(generation, saved, turn.refused, session.layout));
    } finally {
      if (!ended) await session.rollback(turn);
    }
  }

  #session(scope: string | undefined, fingerprint: string, chunks: ChunkingOptions | null): KvCacheSession {
    return this.store.createSession(this.modelId, {
      fingerprint,
      ...(chunks ? { chunks } : {}),
      ...(scope !== undefined ? { scope } : {}),
      ...(this.#sessionLogger ? { logger: this.#sessionLogger } : {}),
    });
  }
}

interface Saved {
  saveMs: number;
  commitMs: number;
  outcome: Committed | null;
  failure: CompletionCommitFailure | null;
}

const NOTHING_SAVED: Saved = { saveMs: 0, commitMs: 0, outcome: null, failure: null };

function resultOf(generation: Generation, stats: CompletionStats): CompletionResult {
  return generation.toolCalls?.length ? { text: generation.text, toolCalls: generation.toolCalls, stats } : { text: generation.text, stats };
}

/** The one `CompletionStats` of every adapter, from what the engine measured and the commit. */
function completionStats(generation: Generation, saved: Saved, refused: CacheRefusal | null, layout: CompletionStats["layout"]): CompletionStats {
  const { reuse } = generation;
  return {
    hit: reuse.source !== "none",
    source: reuse.source,
    sourceKey: reuse.source === "none" ? null : reuse.sourceKey,
    promptTokens: generation.promptTokens,
    reusedTokens: generation.reusedTokens,
    evaluatedTokens: generation.promptTokens - generation.reusedTokens,
    completionTokens: generation.completionTokens,
    finishReason: generation.finishReason,
    ttftMs: generation.ttftMs,
    loadMs: reuse.loadMs,
    saveMs: saved.saveMs,
    commitMs: saved.commitMs,
    committed: saved.outcome !== null,
    commitFailure: saved.failure,
    refused,
    layout,
  };
}
