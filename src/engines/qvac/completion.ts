/**
 * A completion handler over QVAC's llama.cpp addon (`@qvac/llm-llamacpp` 0.53.0, on Bare)
 * that keeps each conversation's KV cache with kvkeep, following QVAC's own plugin flow:
 * prime a missing cache with the system prompt (`prefill`), send only the messages the cache
 * does not hold (`decideCachedHistorySlice`), commit only turns QVAC would commit
 * (`shouldCommitCachedTurn`), cancel through the addon on abort.
 *
 * What kvkeep changes in that flow, and why (measured in test/fixtures/QVAC-FACTS.md):
 * - The addon is never given a committed file as `cacheKey`. It writes its active key's state
 *   back to that path whenever a later run switches keys, outside any lock — so a committed
 *   file passed in place would be rewritten behind kvkeep's back. Each turn copies the
 *   committed state to `turn.savePath` (a reflink or `copy_file_range` where the filesystem
 *   can) and runs on that key; `commitTurn` renames it into place atomically, and a rollback
 *   deletes it, so the addon's next switch finds no file and writes nothing.
 * - Only a state whose manifest matches this model's fingerprint reaches the addon: a
 *   truncated file aborts the process, a same-shape state from other weights loads silently.
 * - A stale saved count (the history does not extend the cached conversation) runs the whole
 *   history on an empty state instead of appending it to a cache that does not hold its
 *   prefix; the turn's commit then replaces the stale cache.
 */
import { copyFile } from "node:fs/promises";
import { constants as fsConstants } from "node:fs";
import { getDefaultStore } from "../../default-store.js";
import { fsWriteError, KvKeepError } from "../../errors.js";
import { generateConfigHash } from "../../keys/config-hash.js";
import { assertScope } from "../../keys/scope.js";
import { type Logger, logLine, silentLogger } from "../../logger.js";
import { decideCachedHistorySlice } from "../../slice/decide.js";
import type { KvCacheStore } from "../../store/store.js";
import type { CacheRefusal, KvCacheSession, TurnHandle } from "../../types.js";
import { assertSupportedAddon } from "./addon-version.js";
import { shouldCommitCachedTurn } from "./commit-rules.js";
import { fingerprintQvacModel } from "./fingerprint.js";
import type { QvacGenerationParams, QvacMessage, QvacModel, QvacResponse, QvacRunOptions } from "./model.js";

export interface QvacCompletionOptions {
  /** A loaded `LlmLlamacpp` (`@qvac/llm-llamacpp` 0.53.0, created with `opts: { stats: true }`). Never unloaded by the adapter. */
  model: unknown;
  /** The kvkeep store. Default: the default store (root from `KVKEEP_DIR`, else the XDG cache dir). */
  store?: KvCacheStore | undefined;
  /** The model id caches are filed under: one safe path component. */
  modelId: string;
  /**
   * Identifies model + state layout in each cache's manifest. Default: sampled bytes of the
   * model files, the addon version and the load-time settings that shape the KV state.
   */
  fingerprint?: string | undefined;
  /** Where the adapter logs. Default: silent. */
  logger?: Logger | undefined;
  /**
   * The scope of every call that names none (`QvacCompletionParams.scope`): whose
   * conversations these are. Default: none (the store's shared space).
   */
  scope?: string | undefined;
}

export interface QvacCompletionParams {
  /** The conversation so far, ending with the new user message. */
  history: readonly QvacMessage[];
  /** A session name (named cache), `true` (auto mode: keyed by the history) or `false` (no cache). */
  kvCache: string | boolean;
  /**
   * Whose conversation this is — a user, a tenant, an API key (`SessionOptions.scope`): the
   * same `kvCache` name in two scopes is two conversations. Default: the adapter's `scope`.
   */
  scope?: string | undefined;
  /** Aborts the call: the addon's job is cancelled, the turn rolls back, the call rejects with ABORTED. */
  signal?: AbortSignal | undefined;
  /** Passed to the addon as `generationParams` (`temp`, `top_p`, `predict`, `seed`, …). */
  generationParams?: QvacGenerationParams | undefined;
  /** Each piece of text as the addon streams it. */
  onToken?: ((piece: string) => void) | undefined;
}

export interface QvacCompletionStats {
  /** A cached conversation supplied part of the prompt. */
  hit: boolean;
  /**
   * Where the reused tokens came from: this conversation's own cache, or none. (The addon
   * cannot cut a state back, so kvkeep/qvac never borrows another conversation's prefix.)
   */
  source: "own" | "none";
  /** Tokens of the prompt: those in the state the run started from plus those it evaluated. */
  promptTokens: number;
  /** Prompt tokens that came from the cache (the system prompt primed by this call does not count). */
  reusedTokens: number;
  /** Prompt tokens evaluated in this call: `promptTokens - reusedTokens`. */
  evaluatedTokens: number;
  /** From the start of the call (after its place in the adapter's queue) to the first piece of text. */
  ttftMs: number;
  /**
   * Time kvkeep spent handing the cached state to the addon: the copy of the committed file to
   * the turn's own key (the addon's read of it is inside `ttftMs`). 0 when nothing was loaded.
   */
  loadMs: number;
  /** Time spent committing the new state (the addon's own write is inside its run). */
  saveMs: number;
  /** Whether this turn's state was committed (QVAC's rules: not aborted, not empty, not cut short). */
  committed: boolean;
  /** The conversation's cache, when there was one and it was refused (another model's, or damaged): why. */
  refused: CacheRefusal | null;
}

export interface QvacCompletionResult {
  text: string;
  stats: QvacCompletionStats;
}

export interface QvacCompletion {
  /** Run one completion. Calls on one adapter run one at a time. */
  completion(params: QvacCompletionParams): Promise<QvacCompletionResult>;
  /** Wait for queued calls; further calls reject with STORE_CLOSED. The model stays loaded. */
  dispose(): Promise<void>;
}

const DEFAULT_SYSTEM_PROMPT = "You are a helpful assistant.";

// Bare has no `performance` global; the Bare build injects one (src/platform/bare/globals.ts).
const now = (): number => performance.now();

function isAbortSignal(value: unknown): value is AbortSignal {
  const s = value as AbortSignal | null;
  return typeof s === "object" && s !== null && typeof s.aborted === "boolean" && typeof s.addEventListener === "function";
}

function validateParams(params: QvacCompletionParams): void {
  const bad = (message: string, argument: string): KvKeepError => new KvKeepError("INVALID_ARGUMENT", message, { argument });
  if (!params || typeof params !== "object") throw bad("completion needs a params object.", "params");
  const { history } = params;
  if (!Array.isArray(history) || history.length === 0) {
    throw bad("history must be a non-empty array of { role, content } messages.", "history");
  }
  history.forEach((m: Partial<QvacMessage> | null, i) => {
    if (!m || typeof m !== "object" || typeof m.role !== "string" || typeof m.content !== "string") {
      throw bad(`history[${i}] must be a { role: string, content: string } message.`, "history");
    }
  });
  if (typeof params.kvCache !== "boolean" && typeof params.kvCache !== "string") {
    throw bad("kvCache must be a session name, true or false.", "kvCache");
  }
  if (params.signal !== undefined && !isAbortSignal(params.signal)) throw bad("signal must be an AbortSignal.", "signal");
  const gp = params.generationParams;
  if (gp !== undefined && (typeof gp !== "object" || gp === null || Array.isArray(gp))) {
    throw bad("generationParams must be a plain object.", "generationParams");
  }
  if (params.onToken !== undefined && typeof params.onToken !== "function") throw bad("onToken must be a function.", "onToken");
  if (params.scope !== undefined) assertScope(params.scope);
}

function abortedCompletion(signal: AbortSignal | undefined): KvKeepError {
  return new KvKeepError("ABORTED", "the completion was aborted; its turn was rolled back.", { cause: signal?.reason });
}

interface RunOutcome {
  text: string;
  producedTokens: boolean;
  ttftMs: number;
  /** Tokens in the state the run started from. */
  loadedTokens: number;
  evaluatedTokens: number;
  generatedTokens: number | undefined;
  tokensAfter: number | undefined;
  stoppedAtContextBoundary: boolean;
}

class QvacCompletionImpl implements QvacCompletion {
  readonly #model: QvacModel;
  readonly #store: KvCacheStore;
  readonly #modelId: string;
  readonly #logger: Logger;
  readonly #fingerprintOption: string | undefined;
  readonly #scope: string | undefined;
  #fingerprint: Promise<string> | null = null;
  #queue: Promise<unknown> = Promise.resolve();
  #disposed = false;

  constructor(options: QvacCompletionOptions) {
    if (!options || typeof options !== "object") {
      throw new KvKeepError("INVALID_ARGUMENT", "createQvacCompletion needs an options object.", { argument: "options" });
    }
    assertSupportedAddon(options.model);
    if (options.fingerprint !== undefined && typeof options.fingerprint !== "string") {
      throw new KvKeepError("INVALID_ARGUMENT", "fingerprint must be a string.", { argument: "fingerprint" });
    }
    this.#model = options.model;
    this.#store = options.store ?? getDefaultStore();
    this.#logger = options.logger ?? silentLogger;
    this.#fingerprintOption = options.fingerprint;
    // The session validates the id (KEY_* codes, as everywhere in kvkeep) and the scope; made
    // now so bad input is refused here, with the fingerprint's file reads deferred to the first call.
    this.#store.createSession(options.modelId, options.scope !== undefined ? { scope: options.scope } : {});
    this.#modelId = options.modelId;
    this.#scope = options.scope;
  }

  completion(params: QvacCompletionParams): Promise<QvacCompletionResult> {
    if (this.#disposed) return Promise.reject(new KvKeepError("STORE_CLOSED", "this completion adapter was disposed."));
    const run = this.#queue.then(() => this.#run(params));
    this.#queue = run.catch(() => {});
    return run;
  }

  async dispose(): Promise<void> {
    this.#disposed = true;
    await this.#queue;
  }

  /** A session of the call's scope (cheap: the fingerprint is computed once per adapter). */
  async #openSession(scope: string | undefined): Promise<KvCacheSession> {
    this.#fingerprint ??= (async () => this.#fingerprintOption ?? (await fingerprintQvacModel(this.#model)))();
    this.#fingerprint.catch(() => (this.#fingerprint = null));
    const fingerprint = await this.#fingerprint;
    return this.#store.createSession(this.#modelId, {
      fingerprint,
      ...(scope !== undefined ? { scope } : {}),
      ...(this.#logger !== silentLogger ? { logger: this.#logger } : {}),
    });
  }

  /** The token budget in force, for QVAC's commit rule. */
  #predict(params: QvacCompletionParams): number | undefined {
    const given = params.generationParams?.predict ?? this.#model._config?.["predict"];
    const n = Number(given);
    return given === undefined || !Number.isFinite(n) ? undefined : n;
  }

  async #run(params: QvacCompletionParams): Promise<QvacCompletionResult> {
    validateParams(params);
    const started = now();
    const { history, signal } = params;
    if (signal?.aborted) throw abortedCompletion(signal);

    if (params.kvCache === false) {
      const outcome = await this.#generate([...history], undefined, params, started);
      if (signal?.aborted) throw abortedCompletion(signal);
      return { text: outcome.text, stats: this.#stats(outcome, false, 0, 0, false, null) };
    }

    const session = await this.#openSession(params.scope ?? this.#scope);
    const systemPrompt = history.filter((m) => m.role === "system").map((m) => m.content).join("\n") || null;
    const configHash = generateConfigHash(systemPrompt);
    const primeText = systemPrompt ?? (this.#model._config?.["system_prompt"] as string | undefined) ?? DEFAULT_SYSTEM_PROMPT;
    const turn = await session.beginTurn({
      ...(params.kvCache === true ? { kind: "auto" as const, history } : { kind: "custom" as const, customKey: params.kvCache }),
      configHash,
      signal,
      primeIfMissing: (path) => this.#prime(path, primeText),
    });
    let committed = false;
    try {
      const { messages, clearStaleCount } = decideCachedHistorySlice(turn.savedCount, true, history);
      // A stale count: the cache does not hold this history's prefix. Run the whole history
      // on an empty state (no file at savePath = a cold start) and let the commit replace it.
      const stale = clearStaleCount;
      let loadMs = 0;
      if (!stale) {
        const copyStart = now();
        try {
          await copyFile(turn.cachePath, turn.savePath, fsConstants.COPYFILE_EXCL | fsConstants.COPYFILE_FICLONE);
        } catch (error) {
          throw fsWriteError("copying the committed state to the turn's own key", error);
        }
        loadMs = now() - copyStart;
      }
      if (signal?.aborted) throw abortedCompletion(signal);
      const outcome = await this.#generate(stale ? [...history] : messages, turn.savePath, params, started);
      if (signal?.aborted) throw abortedCompletion(signal);
      const commit = shouldCommitCachedTurn({
        aborted: false,
        producedTokens: outcome.producedTokens,
        generatedTokens: outcome.generatedTokens,
        predict: this.#predict(params),
        stoppedAtContextBoundary: outcome.stoppedAtContextBoundary,
      });
      const saveStart = now();
      if (commit) committed = await this.#commit(session, turn, history, configHash, outcome);
      const saveMs = committed ? now() - saveStart : 0;
      const reused = stale || turn.primed ? 0 : outcome.loadedTokens;
      return { text: outcome.text, stats: this.#stats(outcome, reused > 0, reused, loadMs, committed, turn.refused, saveMs) };
    } finally {
      if (!committed) await session.rollback(turn);
    }
  }

  async #prime(path: string, systemPrompt: string): Promise<void> {
    const response = await this.#model.run([{ role: "system", content: systemPrompt }], {
      cacheKey: path,
      saveCacheToDisk: true,
      prefill: true,
    });
    await response.await();
  }

  /** One addon run; `cacheKey` undefined = no cache. Cancels the addon's job when the signal aborts. */
  async #generate(messages: QvacMessage[], cacheKey: string | undefined, params: QvacCompletionParams, started: number): Promise<RunOutcome> {
    const options: QvacRunOptions = {
      ...(cacheKey !== undefined ? { cacheKey, saveCacheToDisk: true } : {}),
      ...(params.generationParams ? { generationParams: params.generationParams } : {}),
    };
    const { signal } = params;
    let response: QvacResponse | null = null;
    const onAbort = (): void => {
      response?.cancel().catch((error: unknown) => this.#logger.warn(logLine("the addon's cancel failed", { error })));
    };
    signal?.addEventListener("abort", onAbort, { once: true });
    try {
      response = await this.#model.run(messages, options);
      if (signal?.aborted) onAbort(); // aborted while the job was being admitted
      let text = "";
      let ttftMs = Number.NaN;
      let produced = false;
      response.onUpdate((piece: string) => {
        if (typeof piece !== "string") return;
        if (Number.isNaN(ttftMs)) ttftMs = now() - started;
        if (piece.length > 0) produced = true;
        text += piece;
        params.onToken?.(piece);
      });
      // Resolves after the addon wrote the state to `cacheKey` (also after a cancel), so a
      // rollback that follows never races the addon's write.
      await response.await();
      const stats = response.stats ?? {};
      const evaluated = stats.promptTokens ?? 0;
      const generated = stats.generatedTokens;
      const after = stats.CacheTokens;
      const loaded = after !== undefined && generated !== undefined ? Math.max(0, after - evaluated - generated) : 0;
      return {
        text,
        producedTokens: produced,
        ttftMs,
        loadedTokens: cacheKey === undefined ? 0 : loaded,
        evaluatedTokens: evaluated,
        generatedTokens: generated,
        tokensAfter: after,
        stoppedAtContextBoundary: stats.stopReason === "contextOverflow",
      };
    } finally {
      signal?.removeEventListener("abort", onAbort);
    }
  }

  /** Commit the turn; a failed commit is logged, never a failed completion (the reply exists). */
  async #commit(
    session: KvCacheSession,
    turn: TurnHandle,
    history: readonly QvacMessage[],
    configHash: string,
    outcome: RunOutcome,
  ): Promise<boolean> {
    const messageCount = history.length + 1;
    const tokenCount = outcome.tokensAfter;
    const covered = [...history, { role: "assistant", content: outcome.text }];
    try {
      const result = await session.commitTurn(
        turn,
        turn.kind === "custom"
          ? { kind: "static", messageCount, tokenCount, history: covered } // indexed for prefix lookups
          : { kind: "autoRename", targetCachePath: session.autoCachePath(configHash, covered), messageCount, tokenCount },
      );
      return result.committed;
    } catch (error) {
      this.#logger.warn(logLine("could not commit the turn's cache; the reply stands", { error }));
      return false;
    }
  }

  #stats(
    outcome: RunOutcome,
    hit: boolean,
    reused: number,
    loadMs: number,
    committed: boolean,
    refused: CacheRefusal | null,
    saveMs = 0,
  ): QvacCompletionStats {
    const promptTokens = outcome.loadedTokens + outcome.evaluatedTokens;
    return {
      hit,
      source: hit ? "own" : "none",
      promptTokens,
      reusedTokens: reused,
      evaluatedTokens: promptTokens - reused,
      ttftMs: outcome.ttftMs,
      loadMs,
      saveMs,
      committed,
      refused,
    };
  }
}

/** A completion handler over a loaded QVAC model that keeps conversations' KV caches with kvkeep. */
export function createQvacCompletion(options: QvacCompletionOptions): QvacCompletion {
  return new QvacCompletionImpl(options);
}
