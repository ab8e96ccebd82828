/**
 * The node-llama-cpp half of the turn skeleton (shared/turn.ts): one context with one
 * sequence, opened at the first call; a prime that starts from another conversation's cache
 * when it shares the system prompt; a load that skips the file when the sequence already
 * holds it, or borrows a cache sharing more of the prompt; reuse decided by tokens — the
 * sequence keeps exactly the tokens it shares with the prompt — never by message counts.
 */
import os from "node:os";
import type { ChatWrapper, LlamaContext, LlamaContextSequence, LlamaModel, Token } from "node-llama-cpp";
import { type Logger, logLine } from "../../logger.js";
import type { KvCacheStore } from "../../facade/kvkeep-store.js";
import { attentionRotationSetting } from "../../chunks/chunk-id.js";
import type { BorrowedCache, CacheInfo, CacheMessage, ChunkingOptions, TurnHandle } from "../../types.js";
import { now } from "../shared/clock.js";
import type { Committed } from "../shared/commit.js";
import { invalidArgument } from "../shared/params.js";
import { type EngineTurn, noReuse, type Reuse, type TurnCall, type TurnEngine } from "../shared/turn.js";
import { fingerprintModel, modelFilePath } from "./fingerprint.js";
import { generateReply } from "./generate.js";
import type { CompletionParams, LlamaCppCompletionOptions } from "./options.js";
import { replyMessage } from "./messages.js";
import { primeTokens, renderPrompt } from "./render.js";
import { checkConstraints } from "./constraints.js";
import { planReply } from "./reply-plan.js";
import { readStateTrimTraits, type StateTrimPolicy, stateTrimPolicy } from "./state-trim.js";

/** The options with node-llama-cpp's own types: what the caller passed is node-llama-cpp's objects. */
export type EngineOptions = Omit<LlamaCppCompletionOptions, "model" | "chatWrapper"> & {
  model: LlamaModel;
  chatWrapper?: ChatWrapper | undefined;
};

/** What the adapter opens once: its context and sequence, and what they imply. */
export interface OpenedLlama {
  context: LlamaContext;
  sequence: LlamaContextSequence;
  fingerprint: string;
  /**
   * How far a state loaded from a file may be cut back: any prefix for attention models, one
   * token for sliding-window models, none for recurrent and hybrid ones (state-trim.ts).
   */
  trim: StateTrimPolicy;
  /** Whether kvkeep may store this model's states as token chunks (an attention model without M-RoPE). */
  splittable: boolean;
}

/** A file's identity (size, inode, mtime ns), as `CommitOutcome.file` and `store.cacheFileIdentity` give it. */
type FileIdentity = NonNullable<Committed["file"]>;

/** Which committed cache file the live sequence holds exactly, so its load can be skipped. */
interface Holding {
  cachePath: string;
  identity: FileIdentity;
}

/** What a prime started from: a borrowed state, the prime tokens kept of it, and how far it matched the prompt. */
interface PrimeStart extends Reuse {
  kept: number;
  reach: number;
}

/**
 * A prime keeps only the system prompt of the state it borrowed. When that state shared this
 * many more prompt tokens (an edit late in the first message), loading it again for the turn
 * (a read from the page cache) beats evaluating them again.
 */
const RELOAD_AFTER_PRIME_TOKENS = 16;

export class LlamaCppEngine implements TurnEngine<CompletionParams, OpenedLlama> {
  readonly #options: EngineOptions;
  readonly #store: KvCacheStore;
  readonly #modelId: string;
  readonly #wrapper: ChatWrapper;
  readonly #logger: Logger;
  #holding: Holding | null = null;

  constructor(options: EngineOptions, store: KvCacheStore, modelId: string, wrapper: ChatWrapper, logger: Logger) {
    this.#options = options;
    this.#store = store;
    this.#modelId = modelId;
    this.#wrapper = wrapper;
    this.#logger = logger;
  }

  async open(): Promise<OpenedLlama> {
    const { model } = this.#options;
    const context = await model.createContext({
      ...this.#options.contextOptions,
      contextSize: this.#options.contextSize ?? Math.min(model.trainContextSize, 4096),
      threads: this.#options.threads ?? Math.max(1, os.availableParallelism()),
      sequences: 1,
    });
    const modelPath = modelFilePath(model, this.#options.modelPath);
    if (!modelPath && !this.#options.fingerprint) {
      this.#logger.warn(logLine("model file path unknown: the fingerprint covers shapes, not weights; pass modelPath to tell same-shape models apart"));
    }
    const fingerprint = this.#options.fingerprint ?? (await fingerprintModel(model, context, modelPath));
    const trim = stateTrimPolicy(readStateTrimTraits(model, this.#options.contextOptions ?? {}));
    const splittable = trim.maxCutBack === Number.POSITIVE_INFINITY && !hasMultiAxisRope(model);
    return { context, sequence: context.getSequence(), fingerprint, trim, splittable };
  }

  fingerprint(engine: OpenedLlama): string {
    return engine.fingerprint;
  }

  chunking(engine: OpenedLlama): ChunkingOptions | null {
    if (this.#options.chunkedStates === false || !engine.splittable) return null;
    // The state's geometry (KV types, flash-attention layout) is read from the state itself;
    // what else its bytes depend on: llama.cpp's rotation of quantized K/V and the stream count.
    return { attentionRotation: attentionRotationSetting(process.env), sequences: 1 };
  }

  validate(params: CompletionParams): void {
    if (params.maxTokens !== undefined && (!Number.isSafeInteger(params.maxTokens) || params.maxTokens < 1)) {
      throw invalidArgument("maxTokens must be a positive integer.", "maxTokens");
    }
    if (params.stop !== undefined && (!Array.isArray(params.stop) || params.stop.some((t) => typeof t !== "string" || t.length === 0))) {
      throw invalidArgument("stop must be an array of non-empty strings.", "stop");
    }
    for (const callback of ["onToolCall"] as const) {
      if (params[callback] !== undefined && typeof params[callback] !== "function") throw invalidArgument(`${callback} must be a function.`, callback);
    }
    checkConstraints(params);
  }

  configNames(params: CompletionParams): readonly string[] | undefined {
    return params.tools?.map((t) => t.name);
  }

  async close(engine: OpenedLlama): Promise<void> {
    await engine.context.dispose();
  }

  begin(engine: OpenedLlama, params: CompletionParams, call: TurnCall): EngineTurn {
    const { model } = this.#options;
    const { sequence } = engine;
    const { history } = params;
    const prompt = renderPrompt(model, this.#wrapper, history, params.tools);
    if (prompt.tokens.length >= sequence.contextSize) {
      throw invalidArgument(`the prompt (${prompt.tokens.length} tokens) does not fit the context (${sequence.contextSize}).`, "history");
    }
    const leadingSystem = history.findIndex((m) => m.role !== "system");
    const systemMessages = leadingSystem < 0 ? history.length : leadingSystem;
    const borrow = (exclude: string[], minCommon: number): Promise<Reuse | null> =>
      this.#borrow(engine, call, history, prompt.tokens, exclude, minCommon);
    let primeStart: PrimeStart = { ...noReuse(), kept: 0, reach: 0 };
    let borrowed = false;

    return {
      prime: async (path) => {
        // A new cache holds the system prompt: take it from the cache sharing most of the
        // conversation, if one shares at least the system prompt.
        const tokens = primeTokens(model, this.#wrapper, history, prompt.tokens, params.tools);
        this.#holding = null;
        primeStart = { ...noReuse(), kept: 0, reach: 0 };
        // (Only where a state can be cut back to its system prompt: attention models.)
        if (systemMessages > 0 && engine.trim.maxCutBack === Number.POSITIVE_INFINITY) {
          const lent = await borrow([], systemMessages);
          if (lent) {
            const reach = cutTo(sequence, prompt.tokens, prompt.tokens.length - 1);
            primeStart = { ...lent, kept: cutTo(sequence, tokens, tokens.length), reach };
          }
        }
        if (primeStart.kept === 0) await sequence.clearHistory();
        else if (sequence.nextTokenIndex > primeStart.kept) {
          await sequence.eraseContextTokenRanges([{ start: primeStart.kept, end: sequence.nextTokenIndex }]);
        }
        if (primeStart.kept < tokens.length) await sequence.evaluateWithoutGeneratingNewTokens(tokens.slice(primeStart.kept));
        await sequence.saveStateToFile(path);
      },

      load: async (turn, loadState) => {
        let start: Reuse = turn.primed
          ? { source: primeStart.source, sourceKey: primeStart.sourceKey, loadMs: primeStart.loadMs }
          : { source: "own", sourceKey: turn.cacheKey, loadMs: 0 };
        // Another conversation's cache, when it shares more messages than the turn's own — or,
        // after a prime whose source shared well beyond the prime's tokens (an edit inside the
        // first message), that source again: the prime had to cut it back to the system prompt.
        const ownDepth = turn.primed ? systemMessages : Math.min(turn.savedCount, history.length);
        const reloadPrimeSource = turn.primed && primeStart.reach > primeStart.kept + RELOAD_AFTER_PRIME_TOKENS;
        const minCommon = reloadPrimeSource ? Math.max(1, ownDepth) : ownDepth + 1;
        const lent = minCommon <= history.length ? await borrow([turn.cachePath], minCommon) : null;
        if (lent) {
          borrowed = true;
          return lent;
        }
        if (!turn.primed && !(await this.#holds(turn))) {
          this.#holding = null;
          const loadStart = now();
          try {
            // Only what the state shares with the prompt is read (a chunked cache is joined in memory).
            await loadState((loadPath) => loadInto(sequence, loadPath), { tokens: prompt.tokens });
          } catch (error) {
            // A state llama.cpp refuses costs the reuse, never the reply: start cold.
            this.#logger.warn(logLine("the engine could not load the cache; starting cold", { cachePath: turn.cachePath, error }));
            await sequence.clearHistory();
            start = noReuse();
          }
          start.loadMs = now() - loadStart;
        }
        return start;
      },

      generate: async (turn, reuse) => {
        // Reuse stops exactly where the cached tokens and the prompt differ; at least one
        // prompt token is always evaluated, because logits are not part of a saved state.
        // Without a cache (turn null) the sequence starts empty.
        const keep = turn ? cutTo(sequence, prompt.tokens, prompt.tokens.length - 1, engine.trim) : 0;
        this.#holding = null;
        if (!turn) await sequence.clearHistory();
        const plan = await planReply(model, this.#wrapper, params);
        const reply = await generateReply(model, sequence, prompt, keep, params, call.started, plan);
        // A prime's tokens were evaluated in this call unless they came from another cache.
        const reused = turn?.primed && !borrowed ? Math.min(keep, primeStart.kept) : keep;
        return {
          ...reply,
          reply: replyMessage(reply.text, reply.toolCalls),
          promptTokens: prompt.tokens.length,
          reusedTokens: reused,
          reuse: reused === 0 ? { ...noReuse(), loadMs: reuse.loadMs } : reuse,
          tokenCount: sequence.contextTokens.length,
        };
      },

      save: async (savePath) => {
        await sequence.saveStateToFile(savePath);
      },

      settled: (committed) => {
        // The sequence holds exactly the state this commit installed (identity taken under its lock).
        this.#holding = committed?.file ? { cachePath: committed.cachePath, identity: committed.file } : null;
      },
    };
  }

  /**
   * Load the committed cache at `cachePath` into the idle sequence (from the adapter's queue),
   * if it is trusted for this model; null when it is missing, untrusted, held by a turn, or
   * `signal` aborted.
   */
  preload(engine: OpenedLlama, cachePath: string, signal: AbortSignal | undefined): Promise<CacheInfo | null> {
    return this.#store.useCache(cachePath, { fingerprint: engine.fingerprint }, async (cache) => {
      if (signal?.aborted) return null;
      this.#holding = null;
      await loadInto(engine.sequence, cache.loadPath);
      // Under the cache's lock: the file cannot change between the load and this look.
      const identity = await this.#store.cacheFileIdentity(cache.cachePath);
      this.#holding = identity ? { cachePath: cache.cachePath, identity } : null;
      return cache;
    });
  }

  /**
   * Load the cache of another conversation of the call's scope sharing at least `minCommon`
   * leading messages of `history` (read-only, held only while loading), or nothing. Never
   * fails the turn: a source the engine cannot load is logged, and the turn goes on without it.
   */
  async #borrow(
    engine: OpenedLlama,
    call: TurnCall,
    history: readonly CacheMessage[],
    tokens: readonly Token[],
    exclude: string[],
    minCommon: number,
  ): Promise<Reuse | null> {
    if (this.#options.prefixReuse === false || history.length < minCommon) return null;
    const { sequence } = engine;
    let loading = false;
    try {
      const lent = await this.#store.borrowPrefix(
        {
          ...(call.scope !== undefined ? { scope: call.scope } : {}),
          modelId: this.#modelId,
          fingerprint: engine.fingerprint,
          configHash: call.configHash,
          history,
          tokens,
          exclude,
          minCommonMessages: minCommon,
          exactAncestor: engine.trim.maxCutBack !== Number.POSITIVE_INFINITY,
        },
        async (source: BorrowedCache): Promise<Reuse> => {
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
    const identity = await this.#store.cacheFileIdentity(turn.cachePath);
    return identity !== null && sameFile(identity, holding.identity);
  }
}

/**
 * Models with multi-axis RoPE (Qwen2-VL and its kin: `<arch>.rope.dimension_sections`) write
 * 12 more bytes per KV cell that nothing in the state announces (docs/chunks-format.md): their
 * states are never split.
 */
function hasMultiAxisRope(model: LlamaModel): boolean {
  const metadata = model.fileInfo.metadata as unknown as Record<string, unknown> & { general?: { architecture?: unknown } };
  const architecture = metadata.general?.architecture;
  if (typeof architecture !== "string") return true;
  if (/vl|omni/i.test(architecture)) return true;
  const section = metadata[architecture] as { rope?: { dimension_sections?: unknown } } | undefined;
  return section?.rope?.dimension_sections !== undefined;
}

function sameFile(a: FileIdentity, b: FileIdentity): boolean {
  return a.size === b.size && a.ino === b.ino && a.mtimeNs === b.mtimeNs;
}

/**
 * How many leading `tokens` the live sequence can keep: up to the first token it differs
 * in, at most `max` — and nothing when keeping them would cut the state back further than
 * `trim` allows (recurrent models would re-evaluate all of it; a sliding window would give
 * wrong output).
 */
function cutTo(sequence: LlamaContextSequence, tokens: Token[], max: number, trim?: StateTrimPolicy): number {
  const { firstDifferentIndex } = sequence.compareContextTokens(tokens);
  const keep = Math.min(firstDifferentIndex, max);
  if (trim && sequence.nextTokenIndex - keep > trim.maxCutBack) return 0;
  return keep;
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
