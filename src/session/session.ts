/**
 * The turn lifecycle of the seed contract: beginTurn → (engine loads cachePath, saves to
 * savePath) → commitTurn | rollback. A session is bound to one model; all state it changes
 * belongs to its store (`StoreContext`), so sessions are cheap and disposable. Each step of
 * a turn is a module of its own (see turn.ts).
 */
import { assertHistory, autoCacheKey } from "../keys/auto-key.js";
import { assertConfigHash, assertCustomKey } from "../keys/safe-key.js";
import { scopeIdOption } from "../keys/scope.js";
import { type CacheLocation, cachePathOf } from "../layout/paths.js";
import { type Logger, logLine } from "../logger.js";
import type { StoreContext } from "../store/context.js";
import type { BeginTurnInput, CacheMessage, CommitOutcome, CommitResult, KvCacheSession, SessionOptions, TurnHandle } from "../types.js";
import { KvKeepError } from "../errors.js";
import type { NativeFs } from "../native/index.js";
import { commitTurn } from "./commit.js";
import { loadTurnState } from "./load.js";
import { beginTurn } from "./open.js";
import { rollbackTurn } from "./rollback.js";
import type { SessionEnv, TurnState } from "./turn.js";
import { validateSessionOptions } from "./validate.js";

export function createSession(ctx: StoreContext, modelId: string, options: SessionOptions = {}): KvCacheSession {
  validateSessionOptions(modelId, options);
  // The scope's id, never the scope: it names the session's space on disk and in Redis.
  const scopeId = scopeIdOption(options.scope, "scope");
  const logger = options.logger ?? ctx.logger;
  const fingerprint = options.fingerprint ?? null;
  const policy = options.onRollback ?? ctx.onRollback;
  // Only handles this session made are honoured: a WeakMap keyed by the handle object.
  const turns = new WeakMap<TurnHandle, TurnState>();

  const locate = (cacheKey: string, configHash: string): CacheLocation => ({ scopeId, cacheKey, modelId, configHash });
  // A scoped conversation's default id names its scope too, so a warmer keyed by it never
  // mixes two scopes' conversations that share a key or an opening.
  const scopedId = (id: string): string => (scopeId === null ? id : `${scopeId}/${id}`);
  const log = (level: keyof Logger, message: string, fields?: Record<string, unknown>): void =>
    logger[level](logLine(message, fields));
  // Chunked only where states can be handed over in memory; elsewhere whole files, as before.
  // With `wholeWithRemote`, a store with a remote tier keeps whole files too (a fleet with
  // kvkeep versions that read only whole files).
  const remoteSaysWhole = ctx.remote !== null && options.chunks?.wholeWithRemote === true;
  const chunking = options.chunks && !remoteSaysWhole && memoryFilesWork(ctx.fsBackend) ? options.chunks : null;
  const env: SessionEnv = { ctx, modelId, scopeId, fingerprint, chunking, policy, log, locate, scopedId };

  return {
    modelId,
    layout: chunking ? "chunked" : "whole",

    async loadState<T>(turn: TurnHandle, use: (loadPath: string, tokens: number | null) => Promise<T>, loadOptions?: { tokens?: ArrayLike<number> | undefined }): Promise<T> {
      const st = turns.get(turn);
      if (!st || st.status !== "open") {
        throw new KvKeepError("INVALID_ARGUMENT", "loadState needs an open turn of this session (begun, not yet committed or rolled back).", { argument: "turn" });
      }
      if (typeof use !== "function") throw new KvKeepError("INVALID_ARGUMENT", "loadState needs a function (loadPath) => Promise.", { argument: "use" });
      return loadTurnState(env, st, use, loadOptions?.tokens);
    },
    async beginTurn(input: BeginTurnInput): Promise<TurnHandle> {
      const st = await beginTurn(env, input);
      turns.set(st.handle, st);
      ctx.emit({
        type: "turnStarted",
        conversationId: st.handle.conversationId,
        scopeId,
        kind: st.handle.kind,
        cacheKey: st.loc.cacheKey,
        modelId,
        configHash: st.loc.configHash,
        cachePath: st.cachePath,
      });
      return st.handle;
    },

    async commitTurn(turn: TurnHandle, result: CommitResult): Promise<CommitOutcome> {
      const st = turns.get(turn);
      if (!st || st.status !== "open") return { committed: false, reason: "not-open" };
      return commitTurn(env, st, result);
    },

    async rollback(turn: TurnHandle): Promise<void> {
      const st = turns.get(turn);
      if (!st) return;
      if (st.status === "committing") {
        await st.settling?.catch(() => {});
        return;
      }
      await rollbackTurn(env, st);
    },

    dropStaleSavedCount(turn: TurnHandle): void {
      const st = turns.get(turn);
      if (!st || st.status !== "open") return;
      ctx.layers.savedCounts.delete(st.cachePath);
    },

    autoCachePath(configHash: string, history: readonly CacheMessage[]): string {
      assertConfigHash(configHash);
      assertHistory(history);
      return cachePathOf(ctx.root, locate(autoCacheKey(history), configHash));
    },

    customCachePath(customKey: string, configHash: string): string {
      assertCustomKey(customKey);
      assertConfigHash(configHash);
      return cachePathOf(ctx.root, locate(customKey, configHash));
    },
  };
}

const memoryFileSupport = new WeakMap<NativeFs, boolean>();

/** Whether the backend can make in-memory files (asked once per backend: one memfd made and closed). */
function memoryFilesWork(fsBackend: NativeFs): boolean {
  let works = memoryFileSupport.get(fsBackend);
  if (works === undefined) {
    const probe = fsBackend.createMemoryFile("kvkeep-probe");
    probe?.close();
    works = probe !== null;
    memoryFileSupport.set(fsBackend, works);
  }
  return works;
}
