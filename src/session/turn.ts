/**
 * What every step of a turn shares: the turn's state (the handle is only its public face),
 * the session it belongs to (`SessionEnv`), and the checks every step makes (a delete since
 * the turn took its lock ends it). The steps: validate.ts (the caller's input), open.ts
 * (lock, trust, read-through, prime), commit-static.ts and auto-rename.ts (install the new
 * state), commit.ts (a commit's outcome), rollback.ts (rollback, and settling a turn).
 */
import { KvKeepError } from "../errors.js";
import type { KeyChain } from "../keys/auto-key.js";
import type { CacheLocation } from "../layout/paths.js";
import type { Logger } from "../logger.js";
import type { FileIdentity } from "../durable/identity.js";
import { type Manifest, type ManifestEntry, MAX_CHAIN_KEYS } from "../manifest/format.js";
import { type InstallParams, installCache } from "../manifest/store.js";
import type { Lease } from "../locks/path-locks.js";
import type { StoreContext } from "../store/context.js";
import type { DeleteMark } from "../store/deletes.js";
import type { MemoryFile } from "../native/index.js";
import type { ChunkingOptions, CommitOutcome, TurnHandle } from "../types.js";

export type CommittedOutcome = Extract<CommitOutcome, { committed: true }>;

export const identityOf = (f: FileIdentity): CommittedOutcome["file"] => ({ size: f.size, ino: f.ino, mtimeNs: f.mtimeNs });

type TurnStatus = "open" | "committing" | "committed" | "rolledBack";

/** Everything the session knows about one open turn; the handle is only its public face. */
export interface TurnState {
  readonly handle: TurnHandle;
  readonly loc: CacheLocation;
  readonly cachePath: string;
  readonly init: string;
  readonly lease: Lease;
  readonly header: Omit<Manifest, "current" | "pending" | "format">;
  /** The cache file as the turn found it (after priming); null if there was none (or it was dropped as unreadable). */
  beginIdentity: FileIdentity | null;
  /** The committed manifest entry at begin; kept valid while a new state is installed (null once dropped as unreadable). */
  committedEntry: ManifestEntry | null;
  /** A chunked session's turn: the in-memory file at `handle.savePath` (closed when the turn ends). */
  readonly memory: MemoryFile | null;
  status: TurnStatus;
  /** The delete records when the turn took its lock: a later delete covering its cache (any process) ends it. */
  readonly deleteMark: DeleteMark;
  /** Resolves when a commit in progress has finished (so a racing rollback can wait). */
  settling: Promise<unknown> | null;
  /** Auto mode: the key chain of the turn's history (the commit's chain is it plus the reply). */
  readonly historyChain: KeyChain | null;
}

/** The session a turn belongs to: its store's context, and what the session fixed at creation. */
export interface SessionEnv {
  readonly ctx: StoreContext;
  readonly modelId: string;
  /** The scope's id (null: the shared space). */
  readonly scopeId: string | null;
  readonly fingerprint: string | null;
  /** A chunked session: what its chunks' identities depend on besides the state (null: whole files). */
  readonly chunking: ChunkingOptions | null;
  /** What a rollback does (the session's option, else the store's). */
  readonly policy: "clear" | "keep-committed";
  log(level: keyof Logger, message: string, fields?: Record<string, unknown>): void;
  /** The location of a key in this session's scope, for its model. */
  locate(cacheKey: string, configHash: string): CacheLocation;
  /** A conversation id in this session's scope (a scoped one names its scope too). */
  scopedId(id: string): string;
}

/**
 * The manifest chain of a state covering the history whose key chain is `chain` (keys 1…n),
 * plus `extra` keys; never longer than the state's message count (a manifest says no more
 * than its state covers) nor MAX_CHAIN_KEYS.
 */
export function stateChain(chain: KeyChain, messageCount: number, extra: string[] = []): string[] {
  const keys = chain.keys().slice(1, MAX_CHAIN_KEYS + 1);
  return [...keys, ...extra].slice(0, Math.min(MAX_CHAIN_KEYS, messageCount));
}

export function deletedWhileBeginningError(cause?: unknown): KvKeepError {
  return new KvKeepError("DELETED_DURING_TURN", "the cache was deleted while this turn was beginning; start the turn again.", {
    cause,
  });
}

export function deletedDuringTurnError(cause?: unknown): KvKeepError {
  return new KvKeepError("DELETED_DURING_TURN", "the cache was deleted while this turn was open; nothing was committed.", {
    cause,
  });
}

/**
 * Install a new state (the commit protocol). A failure after the new state took the
 * cache file's place does not undo it (the previous state is gone by then): the new
 * state is committed, and the missing last step is logged.
 */
export async function install(env: SessionEnv, params: InstallParams): Promise<ManifestEntry> {
  const { ctx, log } = env;
  const { entry, unsettled } = await installCache(ctx.fsBackend, params);
  if (unsettled) {
    log("warn", "the new state is installed, but a last step of its commit failed; its manifest is settled at its next use", {
      cachePath: params.target,
      code: unsettled.code,
      error: unsettled,
    });
  }
  return entry;
}

/** True when a delete covering `cachePath` ran after the turn took its lock. */
export async function deletedSinceTurnBegan(env: SessionEnv, st: TurnState, cachePath: string): Promise<boolean> {
  const { ctx } = env;
  return ctx.deletedSince(cachePath, st.deleteMark);
}

/** Refuse to keep what a delete covering `paths` removed (or meant to) since the turn began. */
export async function assertNotDeleted(env: SessionEnv, st: TurnState, installed: string | null, ...paths: string[]): Promise<void> {
  const { ctx } = env;
  let deleted = false;
  for (const p of paths) deleted ||= await deletedSinceTurnBegan(env, st, p);
  if (!deleted) return;
  if (installed) await ctx.removeCache(installed);
  throw deletedDuringTurnError();
}
