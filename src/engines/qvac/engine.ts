/**
 * The QVAC half of the turn skeleton (shared/turn.ts), over `@qvac/llm-llamacpp` 0.53.0 on
 * Bare, following QVAC's own plugin flow: prime a missing cache with the system prompt
 * (`prefill`), send only the messages the cache does not hold (`decideCachedHistorySlice`),
 * commit only turns QVAC would commit (`shouldCommitCachedTurn`), cancel through the addon on
 * abort. Where kvkeep departs from that flow, and why, is in completion.ts.
 */
import { constants as fsConstants } from "node:fs";
import { copyFile } from "node:fs/promises";
import { fsWriteError } from "../../errors.js";
import { type Logger, logLine } from "../../logger.js";
import { decideCachedHistorySlice } from "../../slice/decide.js";
import { now } from "../shared/clock.js";
import { invalidArgument, systemPromptOf } from "../shared/params.js";
import { type EngineTurn, type Generation, noReuse, type TurnCall, type TurnEngine } from "../shared/turn.js";
import { shouldCommitCachedTurn } from "./commit-rules.js";
import { fingerprintQvacModel } from "./fingerprint.js";
import type { QvacCompletionParams } from "./options.js";
import type { QvacMessage, QvacModel, QvacResponse, QvacRunOptions, QvacRunStats } from "./model.js";

const DEFAULT_SYSTEM_PROMPT = "You are a helpful assistant.";

/** The addon's stop reasons that mean a limit cut the reply, not the model. */
const CUT_BY_A_LIMIT = new Set<QvacRunStats["stopReason"]>(["predictionLimit", "sequenceLimit", "contextOverflow"]);

/** One addon run, as the addon reported it (`response.stats`: absent without `opts: { stats: true }`). */
interface AddonRun {
  text: string;
  producedTokens: boolean;
  ttftMs: number;
  /** Tokens in the state the run started from (0 when unknown). */
  loadedTokens: number;
  evaluatedTokens: number;
  generatedTokens: number | undefined;
  tokensAfter: number | undefined;
  stopReason: QvacRunStats["stopReason"] | undefined;
}

export class QvacEngine implements TurnEngine<QvacCompletionParams, QvacModel> {
  readonly #model: QvacModel;
  readonly #fingerprint: string | undefined;
  readonly #logger: Logger;

  constructor(model: QvacModel, fingerprint: string | undefined, logger: Logger) {
    this.#model = model;
    this.#fingerprint = fingerprint;
    this.#logger = logger;
  }

  /** Nothing to open: the caller loaded the model (checked when the adapter was made). */
  async open(): Promise<QvacModel> {
    return this.#model;
  }

  async fingerprint(model: QvacModel): Promise<string> {
    return this.#fingerprint ?? (await fingerprintQvacModel(model));
  }

  validate(params: QvacCompletionParams): void {
    const gp = params.generationParams;
    if (gp !== undefined && (typeof gp !== "object" || gp === null || Array.isArray(gp))) {
      throw invalidArgument("generationParams must be a plain object.", "generationParams");
    }
  }

  begin(model: QvacModel, params: QvacCompletionParams, call: TurnCall): EngineTurn {
    const { history } = params;
    let messages: QvacMessage[] = [...history];
    let last: AddonRun | null = null;
    return {
      prime: async (path) => {
        const system = systemPromptOf(history) ?? (model._config?.["system_prompt"] as string | undefined) ?? DEFAULT_SYSTEM_PROMPT;
        const response = await model.run([{ role: "system", content: system }], { cacheKey: path, saveCacheToDisk: true, prefill: true });
        await response.await();
      },

      load: async (turn) => {
        const slice = decideCachedHistorySlice(turn.savedCount, true, history);
        // A stale count: the cache does not hold this history's prefix. Run the whole history
        // on an empty state (no file at savePath = a cold start) and let the commit replace it.
        if (slice.clearStaleCount) return noReuse();
        messages = slice.messages;
        // The addon runs on the turn's own key, never on the committed file (completion.ts).
        const copyStart = now();
        try {
          await copyFile(turn.cachePath, turn.savePath, fsConstants.COPYFILE_EXCL | fsConstants.COPYFILE_FICLONE);
        } catch (error) {
          throw fsWriteError("copying the committed state to the turn's own key", error);
        }
        // A resumed cache is a hit whether or not the addon counts tokens; a primed one is not.
        return { source: turn.primed ? "none" : "own", sourceKey: turn.cacheKey, loadMs: now() - copyStart };
      },

      generate: async (turn, reuse): Promise<Generation> => {
        last = await this.#run(model, messages, turn?.savePath, params, call.started);
        const promptTokens = last.loadedTokens + last.evaluatedTokens;
        const cut = this.#cutByBudget(params, last) || CUT_BY_A_LIMIT.has(last.stopReason);
        return {
          text: last.text,
          aborted: params.signal?.aborted === true,
          ttftMs: last.ttftMs,
          completionTokens: last.generatedTokens ?? 0,
          finishReason: cut ? "length" : "stop",
          promptTokens,
          reusedTokens: reuse.source === "own" ? last.loadedTokens : 0,
          reuse,
          tokenCount: last.tokensAfter,
        };
      },

      mayCommit: () =>
        last !== null &&
        shouldCommitCachedTurn({
          aborted: false,
          producedTokens: last.producedTokens,
          generatedTokens: last.generatedTokens,
          predict: this.#predict(params),
          stoppedAtContextBoundary: last.stopReason === "contextOverflow",
        }),
    };
  }

  /** The token budget in force, for QVAC's commit rule. */
  #predict(params: QvacCompletionParams): number | undefined {
    const given = params.generationParams?.predict ?? this.#model._config?.["predict"];
    const n = Number(given);
    return given === undefined || !Number.isFinite(n) ? undefined : n;
  }

  #cutByBudget(params: QvacCompletionParams, run: AddonRun): boolean {
    const predict = this.#predict(params);
    return predict !== undefined && predict > 0 && run.generatedTokens !== undefined && run.generatedTokens >= predict;
  }

  /** One addon run; `cacheKey` undefined = no cache. Cancels the addon's job when the signal aborts. */
  async #run(model: QvacModel, messages: QvacMessage[], cacheKey: string | undefined, params: QvacCompletionParams, started: number): Promise<AddonRun> {
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
      response = await model.run(messages, options);
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
        stopReason: stats.stopReason,
      };
    } finally {
      signal?.removeEventListener("abort", onAbort);
    }
  }
}
