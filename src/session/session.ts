/**
 * The turn lifecycle of the seed contract: beginTurn → (engine loads cachePath, saves to
 * savePath) → commitTurn | rollback. A session is bound to one model; all state it changes
 * belongs to its store (`StoreContext`), so sessions are cheap and disposable.
 */
import { isKvKeepError, KvKeepError } from "../errors.js";
import { crashPoint } from "../durable/crash-points.js";
import { statIdentity, unlinkIfExists } from "../durable/files.js";
import { assertHistory, autoCacheKey, autoKeyChain } from "../keys/auto-key.js";
import { assertConfigHash, assertCustomKey, assertModelId, AUTO_KEY_PATTERN } from "../keys/safe-key.js";
import { type CacheLocation, cachePathOf, parseCachePath, tempPathFor } from "../layout/paths.js";
import { type Logger, logLine } from "../logger.js";
import { type FileIdentity, type Manifest, type ManifestEntry, sameIdentity } from "../manifest/format.js";
import { installCache, removeCacheFiles, verifyCache } from "../manifest/store.js";
import type { Lease } from "../locks/path-locks.js";
import { initKey } from "../store/layers.js";
import { establishTrust, manifestHeader } from "./trust.js";
import type { StoreContext } from "../store/context.js";
import type {
  BeginTurnInput,
  CacheMessage,
  CommitOutcome,
  CommitResult,
  KvCacheSession,
  SessionOptions,
  TurnHandle,
} from "../types.js";

type TurnStatus = "open" | "committing" | "committed" | "rolledBack";

/** Everything the session knows about one open turn; the handle is only its public face. */
export interface TurnState {
  readonly handle: TurnHandle;
  readonly loc: CacheLocation;
  readonly cachePath: string;
  readonly init: string;
  readonly lease: Lease;
  readonly logger: Logger;
  readonly header: Omit<Manifest, "current" | "pending" | "format">;
  /** The cache file as the turn found it (after priming); null if there was none. */
  readonly beginIdentity: FileIdentity | null;
  /** The committed manifest entry at begin; kept valid while a new state is installed. */
  readonly committedEntry: ManifestEntry | null;
  status: TurnStatus;
  /** Set when `delete` removed this turn's cache while it was open: commit must not resurrect it. */
  invalidated: boolean;
  /** Resolves when a commit in progress has finished (so a racing rollback can wait). */
  settling: Promise<unknown> | null;
}

function isAbortSignal(value: unknown): value is AbortSignal {
  return typeof value === "object" && value !== null && typeof (value as AbortSignal).aborted === "boolean" &&
    typeof (value as AbortSignal).addEventListener === "function";
}

function validateBeginInput(input: BeginTurnInput): void {
  if (!input || typeof input !== "object") {
    throw new KvKeepError("INVALID_ARGUMENT", "beginTurn needs an input object.", { argument: "input" });
  }
  if (input.kind !== "custom" && input.kind !== "auto") {
    throw new KvKeepError("INVALID_ARGUMENT", `input.kind must be "custom" or "auto".`, { argument: "kind" });
  }
  assertConfigHash(input.configHash);
  if (input.kind === "custom") assertCustomKey(input.customKey);
  else assertHistory(input.history);
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

function validateCommitResult(ctx: StoreContext, st: TurnState, result: CommitResult): CacheLocation | null {
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
  if (result.kind === "static") return null;
  const target = typeof result.targetCachePath === "string" ? parseCachePath(ctx.root, result.targetCachePath) : null;
  if (
    !target ||
    !AUTO_KEY_PATTERN.test(target.cacheKey) ||
    target.modelId !== st.loc.modelId ||
    target.configHash !== st.loc.configHash
  ) {
    throw bad(
      "result.targetCachePath must come from session.autoCachePath(configHash, [...history, reply]) of this session and config.",
      "targetCachePath",
    );
  }
  return target;
}

export function createSession(ctx: StoreContext, modelId: string, options: SessionOptions = {}): KvCacheSession {
  assertModelId(modelId);
  if (options.fingerprint !== undefined && typeof options.fingerprint !== "string") {
    throw new KvKeepError("INVALID_ARGUMENT", "options.fingerprint must be a string.", { argument: "fingerprint" });
  }
  const logger = options.logger ?? ctx.logger;
  const fingerprint = options.fingerprint ?? null;
  // Only handles this session made are honoured: a WeakMap keyed by the handle object.
  const turns = new WeakMap<TurnHandle, TurnState>();

  const locate = (cacheKey: string, configHash: string): CacheLocation => ({ cacheKey, modelId, configHash });
  const log = (level: keyof Logger, message: string, fields?: Record<string, unknown>): void =>
    logger[level](logLine(message, fields));

  /**
   * Lock the cache at `loc`, make sure a trusted file is there (verify, else prime), and
   * open a turn on it. With `onlyIfCached`, returns null instead of priming.
   */
  async function openTurn(
    loc: CacheLocation,
    kind: "custom" | "auto",
    input: BeginTurnInput,
    onlyIfCached: boolean,
  ): Promise<TurnState | null> {
    const cachePath = cachePathOf(ctx.root, loc);
    const init = initKey(loc.modelId, loc.configHash, loc.cacheKey);
    ctx.layers.refDir(cachePath);
    let lease: Lease | null = null;
    let primeTemp: string | null = null;
    try {
      // The directory first: it refuses symlinks, and the OS lock file is created inside it.
      await ctx.ensureCacheDir(loc);
      lease = await ctx.locks.acquire(cachePath, input.signal);
      ctx.assertOpen();
      const header = manifestHeader(loc, fingerprint);
      let primed = false;
      const trusted = await establishTrust(ctx, cachePath, loc, fingerprint);
      let committedEntry: ManifestEntry | null = trusted;
      // A count dropped as stale stays dropped for this store: 0 until the next commit.
      const savedCount = trusted ? (ctx.layers.savedCounts.get(cachePath) ?? 0) : 0;

      if (!committedEntry) {
        if (onlyIfCached) {
          lease.release({ removeLockFile: true });
          lease = null;
          ctx.layers.unrefDir(cachePath);
          await ctx.prune(cachePath);
          return null;
        }
        primeTemp = tempPathFor(cachePath);
        await input.primeIfMissing(primeTemp);
        const primedIdentity = await statIdentity(primeTemp);
        if (!primedIdentity) {
          throw new KvKeepError(
            "NO_CACHE_WRITTEN",
            `primeIfMissing resolved but no cache file was written at ${primeTemp}; the engine must save its state to the path it is given.`,
          );
        }
        if (primedIdentity.size === 0) {
          throw new KvKeepError(
            "CACHE_EMPTY",
            `primeIfMissing resolved but the cache file is empty at ${primeTemp}; the engine's save failed (disk full?).`,
          );
        }
        committedEntry = await installCache(ctx.nfs, {
          source: primeTemp,
          target: cachePath,
          header,
          previous: null,
          messageCount: 0,
          tokenCount: null,
          noReplace: false,
        });
        primeTemp = null;
        ctx.layers.recordTrusted(cachePath, init, committedEntry, fingerprint);
        ctx.retention.noteCommitted(cachePath, committedEntry);
        primed = true;
        log("debug", "primed cache", { cachePath });
      } else {
        await ctx.retention.noteUsed(cachePath, committedEntry); // a load is a use (retention's LRU)
      }

      const handle: TurnHandle = Object.freeze({
        cachePath,
        savedCount,
        savePath: tempPathFor(cachePath),
        cacheKey: loc.cacheKey,
        modelId: loc.modelId,
        configHash: loc.configHash,
        kind,
        primed,
        conversationId: input.conversationId ?? loc.cacheKey,
      });
      const st: TurnState = {
        handle,
        loc,
        cachePath,
        init,
        lease,
        logger,
        header,
        beginIdentity: await statIdentity(cachePath),
        committedEntry,
        status: "open",
        invalidated: false,
        settling: null,
      };
      lease = null; // owned by the turn from here on
      return st;
    } catch (error) {
      if (primeTemp) await unlinkIfExists(primeTemp).catch(() => {});
      const cacheGone = !(await statIdentity(cachePath).catch(() => null));
      if (cacheGone) ctx.forgetCache(cachePath, init);
      lease?.release({ removeLockFile: cacheGone });
      ctx.layers.unrefDir(cachePath);
      await ctx.prune(cachePath);
      throw error;
    }
  }

  async function beginTurn(input: BeginTurnInput): Promise<TurnHandle> {
    ctx.assertOpen();
    validateBeginInput(input);
    if (input.signal?.aborted) {
      throw new KvKeepError("ABORTED", "beginTurn was aborted before it started; nothing was changed.", {
        cause: input.signal.reason,
      });
    }
    let st: TurnState | null;
    if (input.kind === "custom") {
      st = await openTurn(locate(input.customKey, input.configHash), "custom", input, false);
    } else {
      // One pass gives the key of every prefix: the lookup key (history without its last
      // message) and, for a miss, the key of the whole history — unique to this
      // conversation, so first turns of different conversations never queue on one file.
      const chain = autoKeyChain(input.history);
      const n = input.history.length;
      st = null;
      if (n > 1) {
        const lookup = locate(chain[n - 1]!, input.configHash);
        // Cheap look first; openTurn re-checks under the lock (the file may go meanwhile).
        if (await statIdentity(cachePathOf(ctx.root, lookup))) st = await openTurn(lookup, "auto", input, true);
      }
      st ??= await openTurn(locate(chain[n]!, input.configHash), "auto", input, false);
    }
    if (!st) throw new Error("unreachable: openTurn returned no turn without onlyIfCached");
    turns.set(st.handle, st);
    ctx.openTurns.add(st);
    ctx.emit({
      type: "turnStarted",
      conversationId: st.handle.conversationId,
      kind: st.handle.kind,
      cacheKey: st.loc.cacheKey,
      modelId,
      configHash: st.loc.configHash,
      cachePath: st.cachePath,
    });
    return st.handle;
  }

  /** The new state the engine saved: at savePath, or rewritten in place at cachePath. */
  async function findNewState(st: TurnState): Promise<{ path: string; inPlace: boolean }> {
    const saved = await statIdentity(st.handle.savePath);
    if (saved) {
      if (saved.size === 0) {
        await unlinkIfExists(st.handle.savePath);
        throw new KvKeepError("SAVE_EMPTY", `the engine saved an empty state at ${st.handle.savePath}; the turn was rolled back.`);
      }
      return { path: st.handle.savePath, inPlace: false };
    }
    const current = await statIdentity(st.cachePath);
    if (current && !(st.beginIdentity && sameIdentity(current, st.beginIdentity))) {
      if (current.size === 0) throw new KvKeepError("SAVE_EMPTY", `the engine left an empty state at ${st.cachePath}.`);
      return { path: st.cachePath, inPlace: true };
    }
    throw new KvKeepError(
      "SAVE_MISSING",
      `no new state was saved for this turn; the engine must write it to turn.savePath (${st.handle.savePath}) before commitTurn. The turn was rolled back.`,
    );
  }

  async function commitStatic(st: TurnState, result: CommitResult): Promise<CommitOutcome> {
    const source = await findNewState(st);
    const entry = await installCache(ctx.nfs, {
      source: source.path,
      target: st.cachePath,
      header: st.header,
      previous: source.inPlace ? null : st.committedEntry,
      messageCount: result.messageCount,
      tokenCount: result.tokenCount ?? null,
      noReplace: false,
    });
    ctx.layers.recordTrusted(st.cachePath, st.init, entry, fingerprint);
    ctx.retention.noteCommitted(st.cachePath, entry);
    return { committed: true, cachePath: st.cachePath, messageCount: result.messageCount, keptExisting: false };
  }

  async function commitAuto(st: TurnState, result: CommitResult & { kind: "autoRename" }, target: CacheLocation) {
    const targetPath = cachePathOf(ctx.root, target);
    if (targetPath === st.cachePath) return commitStatic(st, { ...result, kind: "static" });
    const source = await findNewState(st);
    const targetInit = initKey(target.modelId, target.configHash, target.cacheKey);
    const targetHeader = { ...st.header, cacheKey: target.cacheKey };
    let outcome: CommitOutcome;

    // Another turn (here or in another process) holding the target means the target is in
    // use: keep theirs and drop ours, never wait inside a commit and never mix the two.
    ctx.layers.refDir(targetPath);
    await ctx.ensureCacheDir(target).catch((error: unknown) => {
      ctx.layers.unrefDir(targetPath);
      throw error;
    });
    const targetLease = ctx.locks.tryAcquire(targetPath);
    if (!targetLease) {
      ctx.layers.unrefDir(targetPath);
      log("debug", "commit target is busy; keeping the existing cache", { targetPath });
      outcome = { committed: true, cachePath: targetPath, messageCount: result.messageCount, keptExisting: true };
    } else {
      try {
        const existing = await verifyCache(ctx.nfs, targetPath, targetHeader, { checksum: false });
        if (existing.ok) {
          ctx.layers.recordTrusted(targetPath, targetInit, existing.entry, fingerprint);
          outcome = { committed: true, cachePath: targetPath, messageCount: existing.entry.messageCount, keptExisting: true };
        } else {
          if (!existing.missing) {
            log("warn", "commit target not trusted; replacing it", { targetPath, reason: existing.reason });
            await removeCacheFiles(targetPath);
            ctx.retention.noteRemoved(targetPath);
          }
          try {
            const entry = await installCache(ctx.nfs, {
              source: source.path,
              target: targetPath,
              header: targetHeader,
              previous: null,
              messageCount: result.messageCount,
              tokenCount: result.tokenCount ?? null,
              noReplace: true,
            });
            ctx.layers.recordTrusted(targetPath, targetInit, entry, fingerprint);
            ctx.retention.noteCommitted(targetPath, entry);
            outcome = { committed: true, cachePath: targetPath, messageCount: result.messageCount, keptExisting: false };
          } catch (error) {
            if (!isKvKeepError(error, "TARGET_EXISTS")) throw error;
            // Lost a race with a process that has no lock to respect (JS fallback): theirs stays.
            outcome = { committed: true, cachePath: targetPath, messageCount: result.messageCount, keptExisting: true };
          }
        }
      } finally {
        ctx.layers.unrefDir(targetPath);
        targetLease.release();
      }
    }
    crashPoint("auto:after-target-installed");
    // The source is superseded by the target: remove it and every layer of it.
    if (!source.inPlace || outcome.keptExisting) await unlinkIfExists(source.path);
    await removeCacheFiles(st.cachePath);
    ctx.retention.noteRemoved(st.cachePath);
    ctx.forgetCache(st.cachePath, st.init);
    crashPoint("auto:after-source-removed");
    return outcome;
  }

  async function commitTurn(turn: TurnHandle, result: CommitResult): Promise<CommitOutcome> {
    const st = turns.get(turn);
    if (!st || st.status !== "open") return { committed: false, reason: "not-open" };
    const target = validateCommitResult(ctx, st, result);
    st.status = "committing";
    const work = (async (): Promise<CommitOutcome> => {
      try {
        if (st.invalidated) {
          throw new KvKeepError("DELETED_DURING_TURN", "the cache was deleted while this turn was open; nothing was committed.");
        }
        const outcome =
          result.kind === "static" ? await commitStatic(st, result) : await commitAuto(st, result, target!);
        st.status = "committed";
        // An auto commit moved the cache away: its lock file goes too, so the directory can be pruned.
        finish(st, result.kind === "autoRename");
        ctx.retention.afterCommit(); // a background sweep when one is due; never awaited
        await settle(st, {
          outcome: "committed",
          cachePath: outcome.committed ? outcome.cachePath : st.cachePath,
          messageCount: outcome.committed ? outcome.messageCount : 0,
          tokenCount: result.tokenCount ?? null,
          pruneSource: result.kind === "autoRename",
        });
        return outcome;
      } catch (error) {
        // A commit that failed in kvkeep's own I/O (disk full, …) says nothing against the
        // last committed state: keep it whatever the policy. A turn that saved nothing, or
        // whose cache was deleted, rolls back per the policy like any failed turn.
        const ioFailure = isKvKeepError(error, "NO_SPACE") || isKvKeepError(error, "IO_ERROR");
        log("warn", "commit failed; rolling the turn back", { cachePath: st.cachePath, error });
        st.status = "open";
        await rollbackTurn(st, ioFailure ? "keep-committed" : ctx.onRollback);
        throw error;
      }
    })();
    st.settling = work;
    return work;
  }

  /** Release what a finished turn holds (lease, open-turn entry). */
  function finish(st: TurnState, removeLockFile: boolean): void {
    ctx.openTurns.delete(st);
    st.lease.release({ removeLockFile });
  }

  async function settle(
    st: TurnState,
    info: { outcome: "committed" | "rolledBack"; cachePath: string; messageCount?: number; tokenCount?: number | null; pruneSource: boolean },
  ): Promise<void> {
    ctx.layers.unrefDir(st.cachePath);
    if (info.pruneSource) await ctx.prune(st.cachePath);
    ctx.emit({
      type: "turnSettled",
      conversationId: st.handle.conversationId,
      kind: st.handle.kind,
      cacheKey: parseCachePath(ctx.root, info.cachePath)?.cacheKey ?? st.loc.cacheKey,
      modelId,
      configHash: st.loc.configHash,
      cachePath: info.cachePath,
      outcome: info.outcome,
      ...(info.outcome === "committed" ? { messageCount: info.messageCount ?? 0, tokenCount: info.tokenCount ?? null } : {}),
    });
  }

  /**
   * Roll back per the store's policy. "clear" (and any turn that rewrote the cache in place,
   * or whose cache was deleted) removes all three layers; "keep-committed" only drops the
   * turn's unsaved state when the committed cache was never touched.
   */
  async function rollbackTurn(st: TurnState, policy = ctx.onRollback): Promise<void> {
    if (st.status !== "open") return;
    st.status = "rolledBack";
    await unlinkIfExists(st.handle.savePath).catch(() => {});
    let clear = policy === "clear" || st.invalidated;
    if (!clear) {
      const now = await statIdentity(st.cachePath).catch(() => null);
      clear = !(now && st.beginIdentity && sameIdentity(now, st.beginIdentity));
    }
    if (clear) {
      try {
        await removeCacheFiles(st.cachePath);
        ctx.retention.noteRemoved(st.cachePath);
      } catch (error) {
        log("warn", "could not remove the cache file during rollback; it will be re-verified before use", {
          cachePath: st.cachePath,
          error,
        });
      }
      ctx.forgetCache(st.cachePath, st.init);
    }
    finish(st, clear);
    await settle(st, { outcome: "rolledBack", cachePath: st.cachePath, pruneSource: clear });
  }

  async function rollback(turn: TurnHandle): Promise<void> {
    const st = turns.get(turn);
    if (!st) return;
    if (st.status === "committing") {
      await st.settling?.catch(() => {});
      return;
    }
    await rollbackTurn(st);
  }

  function dropStaleSavedCount(turn: TurnHandle): void {
    const st = turns.get(turn);
    if (!st || st.status !== "open") return;
    ctx.layers.savedCounts.delete(st.cachePath);
  }

  function autoCachePath(configHash: string, history: readonly CacheMessage[]): string {
    assertConfigHash(configHash);
    assertHistory(history);
    return cachePathOf(ctx.root, locate(autoCacheKey(history), configHash));
  }

  function customCachePath(customKey: string, configHash: string): string {
    assertCustomKey(customKey);
    assertConfigHash(configHash);
    return cachePathOf(ctx.root, locate(customKey, configHash));
  }

  return { modelId, beginTurn, commitTurn, rollback, dropStaleSavedCount, autoCachePath, customCachePath };
}

