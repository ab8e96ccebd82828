/**
 * A completion handler over a node-llama-cpp model that keeps each conversation's KV cache
 * with kvkeep. It uses the session exactly as a handler should: begin the turn (priming
 * the system prompt when the cache is missing), load the state, evaluate only what the
 * cache does not hold, generate, save to `savePath`, commit — and roll back from `finally`
 * on abort or error. Reuse is decided by tokens, never by message counts.
 */
import os from "node:os";
import {
  type ChatWrapper,
  type LlamaContext,
  type LlamaContextSequence,
  type LlamaModel,
  type LlamaContextOptions,
  type SequenceEvaluateOptions,
  type Token,
  resolveChatWrapper,
} from "node-llama-cpp";
import { getDefaultStore } from "../../default-store.js";
import { statIdentity } from "../../durable/files.js";
import { KvKeepError } from "../../errors.js";
import { messageKeyChain } from "../../keys/auto-key.js";
import { assertScope } from "../../keys/scope.js";
import { generateConfigHash } from "../../keys/config-hash.js";
import { type Logger, logLine, silentLogger } from "../../logger.js";
import { type FileIdentity, sameIdentity } from "../../manifest/format.js";
import type { KvCacheStore } from "../../store/store.js";
import type {
  BorrowedCache,
  CacheInfo,
  CacheMessage,
  CacheRefusal,
  CommitFailureReason,
  CommitOutcome,
  KvCacheSession,
  TurnHandle,
} from "../../types.js";
import { parseCachePath } from "../../layout/paths.js";
import type { WarmFn } from "../../warm/types.js";
import { fingerprintModel, modelFilePath, modelIdFromModel } from "./fingerprint.js";
import { type LlamaTool, primeTokens, renderPrompt } from "./render.js";
import { readStateTrimTraits, type StateTrimPolicy, stateTrimPolicy } from "./state-trim.js";
import { StopTextStream } from "./stop-text-stream.js";

/**
 * A node-llama-cpp 3 `LlamaModel`, described by the members kvkeep's types rely on rather
 * than imported: an app's model comes from the app's own copy of node-llama-cpp, and
 * node-llama-cpp's classes have private members, so TypeScript refuses a `LlamaModel` of one
 * copy where another copy's is declared (TS2322, "separate declarations of a private
 * property"). In a local-path install kvkeep's declarations would resolve node-llama-cpp
 * from the checkout's dev copy. Any copy's `LlamaModel` fits this.
 */
export interface LlamaModelLike {
  readonly filename: string | undefined;
  readonly fileInfo: object;
  readonly fileInsights: { readonly isRecurrent: boolean; readonly isHybrid: boolean; readonly swaSize: number | undefined };
  readonly trainContextSize: number;
  tokenize(text: string, specialTokens?: boolean): readonly number[];
  detokenize(tokens: readonly number[], specialTokens?: boolean): string;
  createContext(options?: object): Promise<object>;
}

/** A node-llama-cpp `ChatWrapper` from any copy of node-llama-cpp (see `LlamaModelLike`). */
export interface ChatWrapperLike {
  readonly wrapperName: string;
}

export interface LlamaCppCompletionOptions {
  /** The loaded model (node-llama-cpp's `LlamaModel`, from the app's copy). The adapter never disposes it. */
  model: LlamaModelLike;
  /** The kvkeep store. Default: the default store (root from `KVKEEP_DIR`, else the XDG cache dir). */
  store?: KvCacheStore | undefined;
  /** The model id caches are filed under. Default: the model's file name, made a safe path component. */
  modelId?: string | undefined;
  /** Context size in tokens. Default: the model's training context, at most 4096. */
  contextSize?: number | undefined;
  /**
   * CPU threads. Default: `os.availableParallelism()` — node-llama-cpp's own default is at
   * least 4, which on a 2-core machine makes small models hundreds of times slower.
   */
  threads?: number | undefined;
  /** Further context options (flash attention, KV cache types, batch size); they enter the fingerprint. */
  contextOptions?: Omit<LlamaContextOptions, "contextSize" | "threads" | "sequences"> | undefined;
  /** The chat wrapper (a node-llama-cpp `ChatWrapper`). Default: the one node-llama-cpp resolves for the model. */
  chatWrapper?: ChatWrapperLike | undefined;
  /**
   * Identifies model + state layout in each cache's manifest. Default: derived from the GGUF
   * metadata and tensor info, sampled weight bytes, file size, the llama.cpp release and the
   * context's size, flash attention and KV types (`fingerprintModel`).
   */
  fingerprint?: string | undefined;
  /**
   * The model's GGUF file, for the fingerprint's weight samples. Default: the path the model
   * was loaded from (read from node-llama-cpp).
   */
  modelPath?: string | undefined;
  /** Where the adapter logs. Default: silent. */
  logger?: Logger | undefined;
  /**
   * Start a turn from another conversation's cache when it shares more of the prompt than
   * the turn's own cache (regenerate, edit, fork, a new chat with the same system prompt),
   * found with `store.findPrefix` and loaded read-only with `store.borrowPrefix`. Models whose
   * KV cells cannot be erased (recurrent, hybrid, sliding-window) borrow exact ancestors only.
   * Default: true.
   */
  prefixReuse?: boolean | undefined;
  /**
   * The scope of every call that names none (`CompletionParams.scope`): whose conversations
   * these are. Calls of different scopes never share a cache or a prefix. Default: none (the
   * store's shared space).
   */
  scope?: string | undefined;
}

export interface CompletionParams {
  /** The conversation so far, ending with the new user message. */
  history: readonly CacheMessage[];
  /** A session name (named cache), `true` (auto mode: keyed by the history) or `false` (no cache, cold). */
  kvCache: string | boolean;
  /**
   * Whose conversation this is — a user, a tenant, an API key (`SessionOptions.scope`): its
   * caches, and the caches its turns may start from, are that scope's only. The same
   * `kvCache` name in two scopes is two conversations. Default: the adapter's `scope`.
   */
  scope?: string | undefined;
  /** Tools to describe to the model; their names enter the config hash. */
  tools?: readonly LlamaTool[] | undefined;
  /** Stop after this many generated tokens. Default: until the model ends its reply or the context is full. */
  maxTokens?: number | undefined;
  /**
   * Texts that end the reply (as OpenAI's `stop`), besides the chat wrapper's own: the reply
   * is cut before the first one that appears, and `finishReason` is `"stop"`.
   */
  stop?: readonly string[] | undefined;
  /** Sampling, passed to the engine as given; nothing is added (no repeat penalty unless asked). */
  temperature?: number | undefined;
  topK?: number | undefined;
  topP?: number | undefined;
  minP?: number | undefined;
  seed?: number | undefined;
  repeatPenalty?: SequenceEvaluateOptions["repeatPenalty"];
  /**
   * Aborts the call: checked while waiting for the cache, before generation starts and
   * after each generated token (not inside one evaluation batch). The turn rolls back and
   * the call rejects with ABORTED.
   */
  signal?: AbortSignal | undefined;
  /**
   * Names the conversation in the store's turn events (warming). Default: the session name;
   * in auto mode, an id derived from the history's opening (see `TurnHandle.conversationId`).
   */
  conversationId?: string | undefined;
  /**
   * Called with each piece of generated text as it is produced. The pieces join to exactly
   * the returned text: text that might begin a stop sequence is held back until it cannot.
   */
  onToken?: ((text: string) => void) | undefined;
}

export interface CompletionStats {
  /** A cached state supplied part of the prompt. */
  hit: boolean;
  /** Tokens of the rendered prompt. */
  promptTokens: number;
  /** Prompt tokens that came from the cache (primed system tokens of a fresh cache do not count). */
  reusedTokens: number;
  /** Prompt tokens evaluated in this call: `reusedTokens + evaluatedTokens === promptTokens`. */
  evaluatedTokens: number;
  /**
   * From the start of the call (after its place in the adapter's queue, and after the
   * adapter's one-time context creation on its first call) to the first generated token.
   */
  ttftMs: number;
  /** Time spent loading the cache state into the engine (0 when none was loaded). */
  loadMs: number;
  /** Time spent saving the new state and committing it. */
  saveMs: number;
  /** The part of `saveMs` spent in `commitTurn` (verify, fsync, rename, manifest). */
  commitMs: number;
  /**
   * Why the turn's new state was not committed (the reply stands; the turn rolled back as
   * `commitTurn` says, keeping the last committed state for kvkeep's own I/O failures), or
   * null when it was committed or no cache was used. `"error"`: `commitTurn` threw.
   */
  commitFailure: CommitFailureReason | "error" | null;
  /** Tokens generated for the reply (the end-of-generation token not counted). */
  completionTokens: number;
  /** `"length"`: `maxTokens` or the context's end cut the reply; `"stop"`: the model ended it, or a stop text did. */
  finishReason: "stop" | "length";
  /**
   * Where the reused tokens came from: `"own"` — this conversation's cache; `"prefix"` —
   * another conversation's cache sharing the prompt's opening (borrowed read-only); `"none"`
   * — nothing was reused (a cold start, or `kvCache: false`).
   */
  source: "own" | "prefix" | "none";
  /** The cache key the reused tokens came from (null when `source` is `"none"`). */
  sourceKey: string | null;
  /**
   * The turn's cache, when kvkeep found one and refused it (`TurnHandle.refused`): `"foreign"`
   * — made for another model fingerprint (other weights, context size, KV types), config or
   * key; `"corrupt"` — damaged, truncated or without a valid manifest. It was removed and the
   * turn primed afresh. Null when nothing was refused (and with `kvCache: false`).
   */
  refused: CacheRefusal | null;
}

export interface CompletionResult {
  text: string;
  stats: CompletionStats;
}

export interface LlamaCppCompletion {
  /** Run one completion. Calls on one adapter are queued and run one at a time. */
  completion(params: CompletionParams): Promise<CompletionResult>;
  /**
   * Load a committed cache into the adapter's idle sequence (in its queue, between
   * completions), so the next turn on that cache skips the load. Only a cache trusted for
   * this model is loaded; resolves to what was loaded, or null (missing, untrusted, or held
   * by a turn, or `signal` aborted).
   */
  preload(cachePath: string, options?: { signal?: AbortSignal }): Promise<CacheInfo | null>;
  /**
   * A warm strategy for `createCacheWarmer`/`createStoreWarmer`: preloads the cache a
   * conversation's last turn settled on (`ctx.cachePath`) and reports its tokens as read.
   */
  readonly preloadWarm: WarmFn;
  /** Wait for queued calls and free the context (not the model). */
  dispose(): Promise<void>;
}

interface Engine {
  context: LlamaContext;
  sequence: LlamaContextSequence;
  fingerprint: string;
  /**
   * How far a state loaded from a file may be cut back: any prefix for attention models, one
   * token for sliding-window models, none for recurrent and hybrid ones (state-trim.ts).
   */
  trim: StateTrimPolicy;
}

/** What a turn starts from: reused tokens and where they came from. */
interface Start {
  source: CompletionStats["source"];
  sourceKey: string | null;
  loadMs: number;
}

/** What one generation produced, and why it ended. */
interface Generation {
  text: string;
  ttftMs: number;
  aborted: boolean;
  completionTokens: number;
  finishReason: "stop" | "length";
}

/** Which committed cache file the live sequence holds exactly, so its load can be skipped. */
interface Holding {
  cachePath: string;
  identity: FileIdentity;
}

const now = (): number => performance.now();

/**
 * A prime keeps only the system prompt of the state it borrowed. When that state shared this
 * many more prompt tokens (an edit late in the first message), loading it again for the turn
 * (a read from the page cache) beats evaluating them again.
 */
const RELOAD_AFTER_PRIME_TOKENS = 16;

function validateParams(params: CompletionParams): void {
  const bad = (message: string, argument: string): KvKeepError => new KvKeepError("INVALID_ARGUMENT", message, { argument });
  if (!params || typeof params !== "object") throw bad("completion needs a params object.", "params");
  if (!Array.isArray(params.history) || params.history.length === 0) {
    throw bad("history must be a non-empty array of { role, content } messages.", "history");
  }
  const kv = params.kvCache;
  if (typeof kv !== "boolean" && typeof kv !== "string") throw bad("kvCache must be a session name, true or false.", "kvCache");
  if (params.maxTokens !== undefined && (!Number.isSafeInteger(params.maxTokens) || params.maxTokens < 1)) {
    throw bad("maxTokens must be a positive integer.", "maxTokens");
  }
  if (params.onToken !== undefined && typeof params.onToken !== "function") throw bad("onToken must be a function.", "onToken");
  if (params.stop !== undefined && (!Array.isArray(params.stop) || params.stop.some((t) => typeof t !== "string" || t.length === 0))) {
    throw bad("stop must be an array of non-empty strings.", "stop");
  }
  if (params.scope !== undefined) assertScope(params.scope);
}

/** The options with node-llama-cpp's own types: what the caller passed is node-llama-cpp's objects. */
type EngineOptions = Omit<LlamaCppCompletionOptions, "model" | "chatWrapper"> & { model: LlamaModel; chatWrapper?: ChatWrapper | undefined };

export class LlamaCppCompletionImpl implements LlamaCppCompletion {
  readonly #options: EngineOptions;
  readonly #store: KvCacheStore;
  readonly #modelId: string;
  readonly #wrapper: ChatWrapper;
  readonly #logger: Logger;
  #engine: Promise<Engine> | null = null;
  #queue: Promise<unknown> = Promise.resolve();
  #holding: Holding | null = null;
  #disposed = false;

  constructor(given: LlamaCppCompletionOptions) {
    if (!given?.model) throw new KvKeepError("INVALID_ARGUMENT", "createLlamaCppCompletion needs a loaded model.", { argument: "model" });
    const options = given as unknown as EngineOptions;
    this.#options = options;
    this.#store = options.store ?? getDefaultStore();
    this.#modelId = options.modelId ?? modelIdFromModel(options.model);
    this.#wrapper = options.chatWrapper ?? resolveChatWrapper(options.model);
    this.#logger = options.logger ?? silentLogger;
    if (options.scope !== undefined) assertScope(options.scope);
  }

  completion(params: CompletionParams): Promise<CompletionResult> {
    if (this.#disposed) return Promise.reject(new KvKeepError("STORE_CLOSED", "this completion adapter was disposed."));
    const run = this.#queue.then(() => this.#run(params));
    this.#queue = run.catch(() => {});
    return run;
  }

  preload(cachePath: string, options: { signal?: AbortSignal } = {}): Promise<CacheInfo | null> {
    if (this.#disposed) return Promise.reject(new KvKeepError("STORE_CLOSED", "this completion adapter was disposed."));
    const run = this.#queue.then(async () => {
      if (options.signal?.aborted) return null;
      // Only this adapter's caches: another model's may share a fingerprint given by hand.
      if (parseCachePath(this.#store.root, cachePath)?.modelId !== this.#modelId) return null;
      const { sequence, fingerprint } = await this.#openEngine();
      return this.#store.useCache(cachePath, { fingerprint }, async (cache) => {
        if (options.signal?.aborted) return null;
        this.#holding = null;
        await loadInto(sequence, cache.cachePath);
        // Under the cache's lock: the file cannot change between the load and this stat.
        const identity = await statIdentity(cache.cachePath);
        this.#holding = identity ? { cachePath: cache.cachePath, identity } : null;
        return cache;
      });
    });
    this.#queue = run.catch(() => {});
    return run;
  }

  readonly preloadWarm: WarmFn = async (_conversationId, ctx, options) => {
    if (typeof ctx.cachePath !== "string") return { error: "nothing to preload: the last turn named no cache" };
    try {
      const cache = await this.preload(ctx.cachePath, { signal: options.signal });
      if (!cache) return { error: `cache not preloaded (missing, untrusted, in use, or aborted): ${ctx.cachePath}` };
      const tokens = cache.tokenCount ?? 1;
      return { inputTokens: tokens, cacheReadTokens: tokens, outputTokens: 0, cacheWriteTokens: 0 };
    } catch (error) {
      return { error: `preload failed: ${(error as Error)?.message ?? String(error)}` };
    }
  };

  async dispose(): Promise<void> {
    this.#disposed = true;
    await this.#queue;
    const engine = await this.#engine?.catch(() => null);
    await engine?.context.dispose();
  }

  #openEngine(): Promise<Engine> {
    this.#engine ??= (async () => {
      const { model } = this.#options;
      const context = await model.createContext({
        ...this.#options.contextOptions,
        contextSize: this.#options.contextSize ?? Math.min(model.trainContextSize, 4096),
        threads: this.#options.threads ?? Math.max(1, os.availableParallelism()),
        sequences: 1,
      });
      const modelPath = modelFilePath(model, this.#options.modelPath);
      if (!modelPath && !this.#options.fingerprint) {
        this.#logger.warn(
          logLine("model file path unknown: the fingerprint covers shapes, not weights; pass modelPath to tell same-shape models apart"),
        );
      }
      const fingerprint = this.#options.fingerprint ?? (await fingerprintModel(model, context, modelPath));
      const trim = stateTrimPolicy(readStateTrimTraits(model, this.#options.contextOptions ?? {}));
      return { context, sequence: context.getSequence(), fingerprint, trim };
    })();
    this.#engine.catch(() => (this.#engine = null));
    return this.#engine;
  }

  async #run(params: CompletionParams): Promise<CompletionResult> {
    validateParams(params);
    const { model } = this.#options;
    const engine = await this.#openEngine();
    // The clock starts once the engine is open: creating the context is a one-time cost.
    const started = now();
    const { sequence } = engine;
    const scope = params.scope ?? this.#options.scope;
    // A session per call (cheap: no I/O): the call's scope decides where its caches live.
    const session = this.#store.createSession(this.#modelId, {
      fingerprint: engine.fingerprint,
      ...(scope !== undefined ? { scope } : {}),
      ...(this.#options.logger ? { logger: this.#options.logger } : {}),
    });
    const prompt = renderPrompt(model, this.#wrapper, params.history, params.tools);
    if (prompt.tokens.length >= sequence.contextSize) {
      throw new KvKeepError("INVALID_ARGUMENT", `the prompt (${prompt.tokens.length} tokens) does not fit the context (${sequence.contextSize}).`, {
        argument: "history",
      });
    }

    if (params.signal?.aborted) throw abortedCompletion(params.signal);
    if (params.kvCache === false) {
      this.#holding = null;
      await sequence.clearHistory();
      const generation = await this.#generate(sequence, prompt, 0, params, started);
      if (generation.aborted) throw abortedCompletion(params.signal);
      const start: Start = { source: "none", sourceKey: null, loadMs: 0 };
      return { text: generation.text, stats: this.#stats(prompt.tokens.length, 0, generation, start, { saveMs: 0, commitMs: 0, failure: null }, null) };
    }

    const systemPrompt = params.history.filter((m) => m.role === "system").map((m) => m.content).join("\n") || null;
    const configHash = generateConfigHash(systemPrompt, params.tools?.map((t) => t.name));
    const primePrefix = (): Token[] => primeTokens(model, this.#wrapper, params.history, prompt.tokens, params.tools);
    const leadingSystem = params.history.findIndex((m) => m.role !== "system");
    const systemMessages = leadingSystem < 0 ? params.history.length : leadingSystem;
    messageKeyChain(params.history); // once per turn: the session and the prefix lookups reuse it (memoised)
    /** What a prime borrowed: prime tokens kept, and how many prompt tokens its source shared (`reach`). */
    let primeStart: Start & { kept: number; reach: number } = { source: "none", sourceKey: null, loadMs: 0, kept: 0, reach: 0 };
    const turn = await session.beginTurn({
      ...(params.kvCache === true
        ? { kind: "auto" as const, history: params.history }
        : { kind: "custom" as const, customKey: params.kvCache }),
      configHash,
      signal: params.signal,
      conversationId: params.conversationId,
      primeIfMissing: async (path) => {
        // A new cache holds the system prompt: take it from the cache sharing most of the
        // conversation, if one shares at least the system prompt.
        const tokens = primePrefix();
        this.#holding = null;
        primeStart = { source: "none", sourceKey: null, loadMs: 0, kept: 0, reach: 0 };
        // (Only where a state can be cut back to its system prompt: attention models.)
        if (systemMessages > 0 && engine.trim.maxCutBack === Number.POSITIVE_INFINITY) {
          const borrowed = await this.#borrow(engine, scope, params.history, configHash, [], systemMessages);
          if (borrowed) {
            const reach = this.#cutTo(sequence, prompt.tokens, prompt.tokens.length - 1);
            primeStart = { ...borrowed, kept: this.#cutTo(sequence, tokens, tokens.length), reach };
          }
        }
        if (primeStart.kept === 0) await sequence.clearHistory();
        else if (sequence.nextTokenIndex > primeStart.kept) {
          await sequence.eraseContextTokenRanges([{ start: primeStart.kept, end: sequence.nextTokenIndex }]);
        }
        if (primeStart.kept < tokens.length) await sequence.evaluateWithoutGeneratingNewTokens(tokens.slice(primeStart.kept));
        await sequence.saveStateToFile(path);
      },
    });
    let committed = false;
    try {
      let start: Start = turn.primed ? primeStart : { source: "own", sourceKey: turn.cacheKey, loadMs: 0 };
      // Another conversation's cache, when it shares more messages than the turn's own — or,
      // after a prime whose source shared well beyond the prime's tokens (an edit inside the
      // first message), that source again: the prime had to cut it back to the system prompt.
      const ownDepth = turn.primed ? systemMessages : Math.min(turn.savedCount, params.history.length);
      const reloadPrimeSource = turn.primed && primeStart.reach > primeStart.kept + RELOAD_AFTER_PRIME_TOKENS;
      const minCommon = reloadPrimeSource ? Math.max(1, ownDepth) : ownDepth + 1;
      const borrowed =
        minCommon <= params.history.length ? await this.#borrow(engine, scope, params.history, configHash, [turn.cachePath], minCommon) : null;
      if (borrowed) start = borrowed;
      else if (!turn.primed && !(await this.#holds(turn))) {
        this.#holding = null;
        const loadStart = now();
        try {
          await loadInto(sequence, turn.cachePath);
        } catch (error) {
          // A state llama.cpp refuses costs the reuse, never the reply: start cold.
          this.#logger.warn(logLine("the engine could not load the cache; starting cold", { cachePath: turn.cachePath, error }));
          await sequence.clearHistory();
          start = { source: "none", sourceKey: null, loadMs: 0 };
        }
        start.loadMs = now() - loadStart;
      }
      if (params.signal?.aborted) throw abortedCompletion(params.signal);
      // Reuse stops exactly where the cached tokens and the prompt differ; at least one
      // prompt token is always evaluated, because logits are not part of a saved state.
      const keep = this.#cutTo(sequence, prompt.tokens, prompt.tokens.length - 1, engine.trim);
      this.#holding = null;
      const generation = await this.#generate(sequence, prompt, keep, params, started);
      if (generation.aborted) throw abortedCompletion(params.signal);
      const saveStart = now();
      await sequence.saveStateToFile(turn.savePath);
      const commitStart = now();
      const { outcome, failure } = await this.#commit(session, turn, params, configHash, generation.text, sequence.contextTokens.length);
      const commitMs = now() - commitStart;
      committed = true;
      // The sequence holds exactly the state this commit installed (identity taken under its lock).
      this.#holding = outcome?.file ? { cachePath: outcome.cachePath, identity: outcome.file } : null;
      // A prime's tokens were evaluated in this call unless they came from another cache.
      const reused = turn.primed && !borrowed ? Math.min(keep, primeStart.kept) : keep;
      if (reused === 0) start = { source: "none", sourceKey: null, loadMs: start.loadMs };
      const save = { saveMs: now() - saveStart, commitMs, failure };
      return { text: generation.text, stats: this.#stats(prompt.tokens.length, reused, generation, start, save, turn.refused) };
    } finally {
      if (!committed) await session.rollback(turn);
    }
  }

  /**
   * How many leading `tokens` the live sequence can keep: up to the first token it differs
   * in, at most `max` — and nothing when keeping them would cut the state back further than
   * `trim` allows (recurrent models would re-evaluate all of it; a sliding window would give
   * wrong output).
   */
  #cutTo(sequence: LlamaContextSequence, tokens: Token[], max: number, trim?: StateTrimPolicy): number {
    const { firstDifferentIndex } = sequence.compareContextTokens(tokens);
    const keep = Math.min(firstDifferentIndex, max);
    if (trim && sequence.nextTokenIndex - keep > trim.maxCutBack) return 0;
    return keep;
  }

  /**
   * Load the cache of another conversation of the same scope sharing at least `minCommon`
   * leading messages of `history` (read-only, held only while loading), or nothing. Never
   * fails the turn: a source the engine cannot load is logged, and the turn goes on without it.
   */
  async #borrow(
    engine: Engine,
    scope: string | undefined,
    history: readonly CacheMessage[],
    configHash: string,
    exclude: string[],
    minCommon: number,
  ): Promise<Start | null> {
    if (this.#options.prefixReuse === false || history.length < minCommon) return null;
    const { sequence } = engine;
    let loading = false;
    try {
      const lent = await this.#store.borrowPrefix(
        {
          ...(scope !== undefined ? { scope } : {}),
          modelId: this.#modelId,
          fingerprint: engine.fingerprint,
          configHash,
          history,
          exclude,
          minCommonMessages: minCommon,
          exactAncestor: engine.trim.maxCutBack !== Number.POSITIVE_INFINITY,
        },
        async (source: BorrowedCache): Promise<Start> => {
          loading = true;
          this.#holding = null;
          const loadStart = now();
          await loadInto(sequence, source.loadPath);
          return { source: "prefix", sourceKey: source.cacheKey, loadMs: now() - loadStart };
        },
      );
      return lent?.value ?? null;
    } catch (error) {
      this.#logger.warn(logLine("could not start from another conversation's cache; going on without it", { error }));
      // Only a load that began left the sequence in doubt; a borrow that failed before it
      // leaves the live state (maybe the turn's own cache, which then need not be loaded).
      if (loading) await sequence.clearHistory();
      return null;
    }
  }

  /** Whether the live sequence already holds exactly the committed file the turn names. */
  async #holds(turn: TurnHandle): Promise<boolean> {
    const holding = this.#holding;
    if (!holding || holding.cachePath !== turn.cachePath) return false;
    const identity = await statIdentity(turn.cachePath);
    return identity !== null && sameIdentity(identity, holding.identity);
  }

  /** Commit the turn; a failed commit is logged, never a failed completion (the reply exists). */
  async #commit(
    session: KvCacheSession,
    turn: TurnHandle,
    params: CompletionParams,
    configHash: string,
    reply: string,
    tokenCount: number,
  ): Promise<{ outcome: Extract<CommitOutcome, { committed: true }> | null; failure: CompletionStats["commitFailure"] }> {
    const messageCount = params.history.length + 1;
    try {
      const outcome = await session.commitTurn(
        turn,
        turn.kind === "custom"
          ? { kind: "static", messageCount, tokenCount, history: [...params.history, { role: "assistant", content: reply }] }
          : {
              kind: "autoRename",
              targetCachePath: session.autoCachePath(configHash, [...params.history, { role: "assistant", content: reply }]),
              messageCount,
              tokenCount,
            },
      );
      if (outcome.committed) return { outcome, failure: null };
      return { outcome: null, failure: outcome.reason === "not-open" ? "error" : outcome.reason };
    } catch (error) {
      this.#logger.warn(logLine("could not commit the turn's cache; the reply stands, the next turn re-primes", { error }));
      return { outcome: null, failure: "error" };
    }
  }

  async #generate(
    sequence: LlamaContextSequence,
    prompt: { tokens: Token[]; stopTexts: string[] },
    keep: number,
    params: CompletionParams,
    started: number,
  ): Promise<Generation> {
    const { model } = this.#options;
    // Nothing kept: clear (also what a model that cannot erase KV cells supports).
    if (keep === 0) await sequence.clearHistory();
    else if (sequence.nextTokenIndex > keep) await sequence.eraseContextTokenRanges([{ start: keep, end: sequence.nextTokenIndex }]);
    const sampling: SequenceEvaluateOptions = {
      ...(params.temperature !== undefined ? { temperature: params.temperature } : {}),
      ...(params.topK !== undefined ? { topK: params.topK } : {}),
      ...(params.topP !== undefined ? { topP: params.topP } : {}),
      ...(params.minP !== undefined ? { minP: params.minP } : {}),
      ...(params.seed !== undefined ? { seed: params.seed } : {}),
      ...(params.repeatPenalty !== undefined ? { repeatPenalty: params.repeatPenalty } : {}),
    };
    const generated: Token[] = [];
    const stream = new StopTextStream(params.stop?.length ? [...prompt.stopTexts, ...params.stop] : prompt.stopTexts, params.onToken);
    let ttftMs = Number.NaN;
    let aborted = false;
    let finishReason: Generation["finishReason"] = "stop";
    const maxTokens = params.maxTokens ?? Number.POSITIVE_INFINITY;
    const iterator = sequence.evaluate(prompt.tokens.slice(keep), { ...sampling, yieldEogToken: true });
    try {
      for await (const token of iterator) {
        if (Number.isNaN(ttftMs)) ttftMs = now() - started;
        if (model.isEogToken(token)) break;
        generated.push(token);
        if (stream.push(model.detokenize([token], false, generated.slice(-9, -1)))) break; // a stop text
        if (params.signal?.aborted) {
          aborted = true;
          break;
        }
        if (generated.length >= maxTokens || sequence.nextTokenIndex >= sequence.contextSize - 1) {
          finishReason = "length";
          break;
        }
      }
    } finally {
      // Close the generator before anyone saves: the saved tokens are then the ones evaluated.
      await iterator.return();
    }
    // The whole reply detokenized at once (multi-byte characters intact), cut at a stop text.
    const text = stream.finish(model.detokenize(generated));
    return { text, ttftMs, aborted: aborted || params.signal?.aborted === true, completionTokens: generated.length, finishReason };
  }

  #stats(
    promptTokens: number,
    reusedTokens: number,
    generation: Generation,
    start: Start,
    save: { saveMs: number; commitMs: number; failure: CompletionStats["commitFailure"] },
    refused: CacheRefusal | null,
  ): CompletionStats {
    return {
      hit: reusedTokens > 0,
      promptTokens,
      reusedTokens,
      evaluatedTokens: promptTokens - reusedTokens,
      ttftMs: generation.ttftMs,
      loadMs: start.loadMs,
      saveMs: save.saveMs,
      commitMs: save.commitMs,
      commitFailure: save.failure,
      completionTokens: generation.completionTokens,
      finishReason: generation.finishReason,
      source: start.source,
      sourceKey: start.sourceKey,
      refused,
    };
  }
}

/** A completion handler over `options.model` that keeps conversations' KV caches with kvkeep. */
export function createLlamaCppCompletion(options: LlamaCppCompletionOptions): LlamaCppCompletion {
  return new LlamaCppCompletionImpl(options);
}

/**
 * Load a state file into the sequence, clearing it first: node-llama-cpp keeps a sequence's
 * checkpoints (recurrent and sliding-window models) across loads, and a cut after the load
 * could restore a checkpoint of the previous conversation (test/fixtures/ENGINE-FACTS.md).
 */
async function loadInto(sequence: LlamaContextSequence, filePath: string): Promise<void> {
  await sequence.clearHistory();
  await sequence.loadStateFromFile(filePath, { acceptRisk: true });
}

function abortedCompletion(signal: AbortSignal | undefined): KvKeepError {
  return new KvKeepError("ABORTED", "the completion was aborted; its turn was rolled back.", { cause: signal?.reason });
}
