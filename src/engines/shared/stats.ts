/**
 * What every engine adapter's `completion()` reports about its turn: one shape for all of
 * them (DESIGN §5: "same `completion()` shape"), filled by the turn skeleton (turn.ts) from
 * what the engine measured. Each field says which engines fill it how.
 */
import type { CacheRefusal, CommitFailureReason } from "../../types.js";

/** Where a turn's reused tokens came from (see `CompletionStats.source`). */
export type ReuseSource = "own" | "prefix" | "none";

/**
 * Why a turn's new state was not committed (`CompletionStats.commitFailure`): one of
 * `commitTurn`'s reasons (`"save-missing"`, `"no-space"`, …); `"error"` — `commitTurn` threw;
 * `"incomplete"` — the engine's rule kept the turn from committing because the reply did not
 * end on its own (QVAC: empty, or cut by `predict` or the context's end).
 */
export type CompletionCommitFailure = CommitFailureReason | "error" | "incomplete";

export interface CompletionStats {
  /**
   * A cached state supplied part of the prompt: `source` is not `"none"`. node-llama-cpp:
   * at least one prompt token was kept from a loaded state. QVAC: the turn resumed its own
   * committed cache (the addon appended only the messages it lacked) — known to kvkeep
   * whether or not the addon reports token counts.
   */
  hit: boolean;
  /**
   * Where the reused tokens came from: `"own"` — this conversation's cache; `"prefix"` —
   * another conversation's cache sharing the prompt's opening, borrowed read-only
   * (node-llama-cpp only: QVAC's addon cannot cut a state back); `"none"` — nothing was
   * reused (a cold start, a primed cache, a stale count, or `kvCache: false`).
   */
  source: ReuseSource;
  /** The cache key the reused tokens came from; null when `source` is `"none"`. */
  sourceKey: string | null;
  /**
   * Tokens of the prompt. node-llama-cpp: of the rendered prompt. QVAC: those in the state the
   * run started from plus those it evaluated, as the addon reports them — 0 when the model was
   * loaded without `opts: { stats: true }`.
   */
  promptTokens: number;
  /**
   * Prompt tokens that came from the cache; system tokens primed by this call do not count.
   * QVAC without `opts: { stats: true }`: 0 (the addon does not say), even on a hit.
   */
  reusedTokens: number;
  /** Prompt tokens evaluated in this call: always `promptTokens - reusedTokens`. */
  evaluatedTokens: number;
  /**
   * Tokens generated for the reply (the end-of-generation token not counted). QVAC: the
   * addon's count, 0 without `opts: { stats: true }`.
   */
  completionTokens: number;
  /**
   * `"length"`: the token budget (`maxTokens`, QVAC's `predict`) or the context's end cut the
   * reply; `"stop"`: the model ended it, or a stop text did. QVAC without `opts: { stats: true }`
   * cannot tell and says `"stop"`.
   */
  finishReason: "stop" | "length";
  /**
   * From the start of the call — after its place in the adapter's queue and the adapter's
   * one-time setup on its first call (node-llama-cpp's context) — to the first generated
   * token (QVAC: the first piece of text). NaN when nothing was generated.
   */
  ttftMs: number;
  /**
   * Time handing the starting state to the engine; 0 when none was loaded (it was already in
   * the engine, or there was none). node-llama-cpp: the engine's load of the state file.
   * QVAC: the copy of the committed file to the turn's own key (the addon's read of it is
   * inside `ttftMs`).
   */
  loadMs: number;
  /**
   * Time saving the new state and committing it; 0 when neither happened. QVAC's addon
   * writes the state during its run, so there this is the commit alone.
   */
  saveMs: number;
  /** The part of `saveMs` spent in `commitTurn` (verify, fsync, rename, manifest); 0 without a commit. */
  commitMs: number;
  /** This turn's new state is the conversation's cache now. False with `kvCache: false`. */
  committed: boolean;
  /**
   * Why the turn's new state was not committed (the reply stands; the turn rolled back as
   * `commitTurn` says, keeping the last committed state for kvkeep's own I/O failures), or
   * null when it was committed or no cache was used. See `CompletionCommitFailure`.
   */
  commitFailure: CompletionCommitFailure | null;
  /**
   * The turn's cache, when kvkeep found one and refused it (`TurnHandle.refused`): `"foreign"`
   * — made for another model fingerprint (other weights, context size, KV types), config or
   * key; `"corrupt"` — damaged, truncated or without a valid manifest. It was removed and the
   * turn primed afresh. Null when nothing was refused (and with `kvCache: false`).
   */
  refused: CacheRefusal | null;
  /**
   * How this adapter stores the conversation's states: `"chunked"` (content-addressed token
   * chunks; a commit writes only what is new) or `"whole"` (one file per state: engines whose
   * state kvkeep cannot split — sliding-window, recurrent and hybrid models, QVAC — and
   * platforms without in-memory files). Null with `kvCache: false`.
   */
  layout: "chunked" | "whole" | null;
}

/** A call of a tool the model made: its id (made by kvkeep), the tool's name, and its arguments as JSON text. */
export interface ToolCall {
  id: string;
  name: string;
  /** The arguments as generated: JSON text valid for the tool's parameter schema. */
  arguments: string;
}

/** What a completion resolves to, for every adapter. */
export interface CompletionResult {
  /** The reply's text (with tool calls: the text before them, often empty). */
  text: string;
  /** The tools the reply calls (node-llama-cpp with `tools`); absent when it calls none. */
  toolCalls?: readonly ToolCall[];
  stats: CompletionStats;
}

/**
 * Every field of `CompletionStats`, once: typed as a record of its keys, so a field added to
 * the type fails to compile until it is listed here. Tests check each adapter's stats
 * against it at run time.
 */
export const COMPLETION_STATS_FIELDS: Readonly<Record<keyof CompletionStats, true>> = {
  hit: true,
  source: true,
  sourceKey: true,
  promptTokens: true,
  reusedTokens: true,
  evaluatedTokens: true,
  completionTokens: true,
  finishReason: true,
  ttftMs: true,
  loadMs: true,
  saveMs: true,
  commitMs: true,
  committed: true,
  commitFailure: true,
  refused: true,
  layout: true,
};
