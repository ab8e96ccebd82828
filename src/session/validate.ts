/** A turn's first step: check what the caller passed, before anything is touched. */
import { KvKeepError } from "../errors.js";
import { assertHistory } from "../keys/auto-key.js";
import { assertConfigHash, assertCustomKey, assertModelId, AUTO_KEY_PATTERN } from "../keys/safe-key.js";
import { type CacheLocation, parseCachePath } from "../layout/paths.js";
import type { StoreContext } from "../store/context.js";
import { MAX_CHUNK_TOKENS, MAX_STREAMS } from "../chunks/state-format.js";
import type { BeginTurnInput, ChunkingOptions, CommitResult, SessionOptions } from "../types.js";
import type { TurnState } from "./turn.js";

/** `createSession`'s model id and options (before anything is made). */
export function validateSessionOptions(modelId: string, options: SessionOptions): void {
  assertModelId(modelId);
  if (options === null || typeof options !== "object") {
    throw new KvKeepError("INVALID_ARGUMENT", "session options must be an object.", { argument: "options" });
  }
  if (options.fingerprint !== undefined && typeof options.fingerprint !== "string") {
    throw new KvKeepError("INVALID_ARGUMENT", "options.fingerprint must be a string.", { argument: "fingerprint" });
  }
  if (options.onRollback !== undefined && options.onRollback !== "clear" && options.onRollback !== "keep-committed") {
    throw new KvKeepError("INVALID_ARGUMENT", `options.onRollback must be "clear" or "keep-committed".`, { argument: "onRollback" });
  }
  if (options.chunks !== undefined) validateChunking(options.chunks);
}

function validateChunking(chunks: ChunkingOptions): void {
  const bad = (message: string): KvKeepError => new KvKeepError("INVALID_ARGUMENT", `options.chunks${message}`, { argument: "chunks" });
  if (chunks === null || typeof chunks !== "object") throw bad(" must be an object { attentionRotation, sequences, chunkTokens?, extra? }.");
  if (typeof chunks.attentionRotation !== "string") throw bad(".attentionRotation must be a string (attentionRotationSetting(process.env)).");
  if (!Number.isSafeInteger(chunks.sequences) || chunks.sequences < 1 || chunks.sequences > MAX_STREAMS) {
    throw bad(`.sequences must be the context's sequence count (1 to ${MAX_STREAMS}).`);
  }
  if (chunks.chunkTokens !== undefined && (!Number.isSafeInteger(chunks.chunkTokens) || chunks.chunkTokens < 1 || chunks.chunkTokens > MAX_CHUNK_TOKENS)) {
    throw bad(`.chunkTokens must be an integer from 1 to ${MAX_CHUNK_TOKENS}.`);
  }
  if (chunks.extra !== undefined && !(Array.isArray(chunks.extra) && chunks.extra.every((e) => typeof e === "string"))) {
    throw bad(".extra must be an array of strings.");
  }
  if (chunks.wholeWithRemote !== undefined && typeof chunks.wholeWithRemote !== "boolean") throw bad(".wholeWithRemote must be a boolean.");
}

function isAbortSignal(value: unknown): value is AbortSignal {
  return typeof value === "object" && value !== null && typeof (value as AbortSignal).aborted === "boolean" &&
    typeof (value as AbortSignal).addEventListener === "function";
}

export function validateBeginInput(input: BeginTurnInput): void {
  if (!input || typeof input !== "object") {
    throw new KvKeepError("INVALID_ARGUMENT", "beginTurn needs an input object.", { argument: "input" });
  }
  if (input.kind !== "custom" && input.kind !== "auto") {
    throw new KvKeepError("INVALID_ARGUMENT", `input.kind must be "custom" or "auto".`, { argument: "kind" });
  }
  assertConfigHash(input.configHash);
  if (input.kind === "custom") assertCustomKey(input.customKey);
  else {
    assertHistory(input.history);
    // An auto-mode cache is the state of a history: with none there is nothing to key or resume.
    if (input.history.length === 0) {
      throw new KvKeepError("INVALID_ARGUMENT", "an auto-mode turn needs a non-empty history (at least the new user message).", {
        argument: "history",
      });
    }
  }
  if (typeof input.primeIfMissing !== "function") {
    throw new KvKeepError("INVALID_ARGUMENT", "primeIfMissing must be a function (path) => Promise<void>.", {
      argument: "primeIfMissing",
    });
  }
  if (input.signal !== undefined && !isAbortSignal(input.signal)) {
    throw new KvKeepError("INVALID_ARGUMENT", "signal must be an AbortSignal.", { argument: "signal" });
  }
  if (input.conversationId !== undefined && typeof input.conversationId !== "string") {
    throw new KvKeepError("INVALID_ARGUMENT", "conversationId must be a string.", { argument: "conversationId" });
  }
}

export function validateCommitResult(ctx: StoreContext, st: TurnState, result: CommitResult): CacheLocation | null {
  const bad = (message: string, argument: string): KvKeepError =>
    new KvKeepError("INVALID_ARGUMENT", message, { argument });
  if (!result || typeof result !== "object") throw bad("commitTurn needs a result object.", "result");
  if (!Number.isSafeInteger(result.messageCount) || result.messageCount < 0) {
    throw bad("result.messageCount must be a non-negative integer.", "messageCount");
  }
  if (result.tokenCount !== undefined && (!Number.isSafeInteger(result.tokenCount) || result.tokenCount < 0)) {
    throw bad("result.tokenCount must be a non-negative integer when given.", "tokenCount");
  }
  const expected = st.handle.kind === "custom" ? "static" : "autoRename";
  if (result.kind !== expected) {
    throw bad(`a ${st.handle.kind} turn commits with kind "${expected}", not ${JSON.stringify(result.kind)}.`, "kind");
  }
  if (result.kind === "static") {
    if (result.history !== undefined) {
      assertHistory(result.history, "history");
      if (result.history.length !== result.messageCount) {
        throw bad(`result.history has ${result.history.length} messages but messageCount is ${result.messageCount}.`, "history");
      }
    }
    return null;
  }
  const target = typeof result.targetCachePath === "string" ? parseCachePath(ctx.root, result.targetCachePath) : null;
  if (
    !target ||
    !AUTO_KEY_PATTERN.test(target.cacheKey) ||
    target.scopeId !== st.loc.scopeId ||
    target.modelId !== st.loc.modelId ||
    target.configHash !== st.loc.configHash
  ) {
    throw bad(
      "result.targetCachePath must come from session.autoCachePath(configHash, [...history, reply]) of this session (its scope) and config.",
      "targetCachePath",
    );
  }
  return target;
}
