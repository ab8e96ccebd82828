/**
 * The turn lifecycle of the seed contract: beginTurn → (engine loads cachePath, saves to
 * savePath) → commitTurn | rollback. A session is bound to one model; all state it changes
 * belongs to its store (`StoreContext`), so sessions are cheap and disposable.
 */
import { errnoCode, fsWriteError, isKvKeepError, KvKeepError } from "../errors.js";
import { crashPoint } from "../durable/crash-points.js";
import { inspectFile, statIdentity, unlinkIfExists } from "../durable/files.js";
import { assertHistory, autoCacheKey, autoConversationId, autoKeyOf, chainKeyOfAuto, type KeyChain, messageKeyChain } from "../keys/auto-key.js";
import { assertConfigHash, assertCustomKey, assertModelId, AUTO_KEY_PATTERN } from "../keys/safe-key.js";
import { scopeIdOption } from "../keys/scope.js";
import { type CacheLocation, cachePathOf, parseCachePath } from "../layout/paths.js";
import { ownTempPath } from "../durable/temp-owner.js";
import { type Logger, logLine } from "../logger.js";
import { type FileIdentity, sameIdentity } from "../durable/identity.js";
import { type Manifest, type ManifestEntry, MAX_CHAIN_KEYS } from "../manifest/format.js";
import { type InstallParams, installCache, verifyCache } from "../manifest/store.js";
import type { Lease } from "../locks/path-locks.js";
import { initKey } from "../store/layers.js";
import { establishTrust, manifestHeader } from "../store/trust.js";
import type { StoreContext } from "../store/context.js";
import type { DeleteMark } from "../store/deletes.js";
import type {
  BeginTurnInput,
  CacheMessage,
  CacheRefusal,
  CommitFailureReason,
  CommitOutcome,
  CommitResult,
  KvCacheSession,
  SessionOptions,
  TurnHandle,
} from "../types.js";

type CommittedOutcome = Extract<CommitOutcome, { committed: true }>;

const identityOf = (f: FileIdentity): CommittedOutcome["file"] => ({ size: f.size, ino: f.ino, mtimeNs: f.mtimeNs });

type TurnStatus = "open" | "committing" | "committed" | "rolledBack";

/** Everything the session knows about one open turn; the handle is only its public face. */
export interface TurnState {
  readonly handle: TurnHandle;
  readonly loc: CacheLocation;
  readonly cachePath: string;
  readonly init: string;
  readonly lease: Lease;
  readonly header: Omit<Manifest, "current" | "pending" | "format">;
  /** The cache file as the turn found it (after priming); null if there was none. */
  readonly beginIdentity: FileIdentity | null;
  /** The committed manifest entry at begin; kept valid while a new state is installed. */
  readonly committedEntry: ManifestEntry | null;
  status: TurnStatus;
  /** The delete records when the turn took its lock: a later delete covering its cache (any process) ends it. */
  readonly deleteMark: DeleteMark;
  /** Resolves when a commit in progress has finished (so a racing rollback can wait). */
  settling: Promise<unknown> | null;
  /** Auto mode: the key chain of the turn's history (the commit's chain is it plus the reply). */
  readonly historyChain: KeyChain | null;
}

/**
 * The manifest chain of a state covering the history whose key chain is `chain` (keys 1…n),
 * plus `extra` keys; never longer than the state's message count (a manifest says no more
 * than its state covers) nor MAX_CHAIN_KEYS.
 */
function stateChain(chain: KeyChain, messageCount: number, extra: string[] = []): string[] {
  const keys = chain.keys().slice(1, MAX_CHAIN_KEYS + 1);
  return [...keys, ...extra].slice(0, Math.min(MAX_CHAIN_KEYS, messageCount));
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

/** The outcome's reason for a commit failure (its error's code, in the outcome's words). */
function failureReason(error: KvKeepError): CommitFailureReason {
  switch (error.code) {
    case "SAVE_MISSING":
      return "save-missing";
    case "SAVE_EMPTY":
      return "save-empty";
    case "DELETED_DURING_TURN":
      return "deleted-during-turn";
    case "NO_SPACE":
      return "no-space";
    case "UNSAFE_PATH":
      return "unsafe-path";
    default:
      return "io-error";
  }
}

function deletedWhileBeginningError(cause?: unknown): KvKeepError {
  return new KvKeepError("DELETED_DURING_TURN", "the cache was deleted while this turn was beginning; start the turn again.", {
    cause,
  });
}

function deletedDuringTurnError(cause?: unknown): KvKeepError {
  return new KvKeepError("DELETED_DURING_TURN", "the cache was deleted while this turn was open; nothing was committed.", {
    cause,
  });
}

export function createSession(ctx: StoreContext, modelId: string, options: SessionOptions = {}): KvCacheSession {
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

  /**
   * Lock the cache at `loc`, make sure a trusted file is there (verify, else prime), and
   * open a turn on it. With `onlyIfCached`, returns no turn instead of priming. `refused`:
   * the file found there and refused (removed), else `refusedBefore` — what an earlier
   * look for this turn refused (auto mode's lookup key).
   */
  async function openTurn(
    loc: CacheLocation,
    kind: "custom" | "auto",
    input: BeginTurnInput,
    onlyIfCached: boolean,
    historyChain: KeyChain | null,
    refusedBefore: CacheRefusal | null = null,
  ): Promise<{ st: TurnState; refused: CacheRefusal | null } | { st: null; refused: CacheRefusal | null }> {
    const cachePath = cachePathOf(ctx.root, loc);
    const init = initKey(loc);
    ctx.layers.refDir(cachePath);
    let lease: Lease | null = null;
    let primeTemp: string | null = null;
    let deleteMark: DeleteMark | null = null;
    try {
      // The directory first: it refuses symlinks, and the OS lock file is created inside it.
      await ctx.ensureCacheDir(loc);
      lease = await ctx.locks.acquire(cachePath, input.signal);
      deleteMark = await ctx.deleteMark();
      ctx.assertOpen();
      const header = manifestHeader(loc, fingerprint);
      let primed = false;
      const trust = await establishTrust(ctx, cachePath, loc, fingerprint);
      let committedEntry: ManifestEntry | null = trust.trusted;
      const refused = trust.refused ?? refusedBefore;
      // Remote hook (read-through): a local miss asks the shared tier; a verified state is
      // installed here under this lock and the turn goes on as a hit.
      let fetched = false;
      if (!committedEntry && ctx.remote) {
        committedEntry = await ctx.remote.readThrough(cachePath, loc, fingerprint);
        fetched = committedEntry !== null;
      }
      // A count dropped as stale stays dropped for this store: 0 until the next commit.
      const savedCount = committedEntry ? (ctx.layers.savedCounts.get(cachePath) ?? 0) : 0;

      if (!committedEntry) {
        if (onlyIfCached) {
          await ctx.releaseCache(lease, cachePath, true);
          lease = null;
          return { st: null, refused };
        }
        primeTemp = ownTempPath(cachePath);
        await input.primeIfMissing(primeTemp);
        await assertNotDeletedWhileBeginning(cachePath, deleteMark, false);
        const primeState = await inspectFile(primeTemp, ctx.nfs);
        if (primeState.kind === "other") {
          throw new KvKeepError(
            "UNSAFE_PATH",
            `primeIfMissing left a ${primeState.type} at ${primeTemp}, not a regular file; kvkeep never commits through it.`,
          );
        }
        const primedIdentity = primeState.kind === "file" ? primeState.identity : null;
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
        committedEntry = await install({
          source: primeTemp,
          target: cachePath,
          header,
          previous: null,
          messageCount: 0,
          tokenCount: null,
          chain: null,
          noReplace: false,
        });
        primeTemp = null;
        ctx.layers.recordTrusted(cachePath, init, committedEntry, fingerprint);
        ctx.retention.noteCommitted(cachePath, committedEntry, fingerprint);
        // A delete that started after the mark may have scanned before the install: take it back.
        await assertNotDeletedWhileBeginning(cachePath, deleteMark, true);
        primed = true;
        log("debug", "primed cache", { cachePath });
      } else {
        // A state fetched from the remote tier was installed here: a delete since the mark takes it back.
        await assertNotDeletedWhileBeginning(cachePath, deleteMark, fetched);
        await ctx.retention.noteUsed(cachePath, committedEntry); // a load is a use (retention's LRU)
      }

      const handle: TurnHandle = Object.freeze({
        cachePath,
        savedCount,
        savePath: ownTempPath(cachePath),
        cacheKey: loc.cacheKey,
        modelId: loc.modelId,
        configHash: loc.configHash,
        kind,
        primed,
        conversationId: input.conversationId ?? scopedId(input.kind === "auto" ? autoConversationId(input.history) : loc.cacheKey),
        refused,
      });
      const st: TurnState = {
        handle,
        loc,
        cachePath,
        init,
        lease,
        header,
        beginIdentity: await statIdentity(cachePath),
        committedEntry,
        status: "open",
        deleteMark,
        settling: null,
        historyChain,
      };
      lease = null; // owned by the turn from here on
      return { st, refused };
    } catch (caught) {
      let error = caught;
      if (primeTemp) await unlinkIfExists(primeTemp).catch(() => {});
      // A delete from another process removes the files a beginning turn works on, which then
      // look missing or empty (NO_CACHE_WRITTEN, IO_ERROR ENOENT, …): say what really
      // happened. (An error of the caller's own primeIfMissing passes through unchanged.)
      if (
        deleteMark !== null &&
        isKvKeepError(error) &&
        error.code !== "DELETED_DURING_TURN" &&
        error.code !== "ABORTED" &&
        (await ctx.deletedSince(cachePath, deleteMark).catch(() => false))
      ) {
        error = deletedWhileBeginningError(error);
      }
      let cacheGone = false;
      if (lease) {
        // Only under the lock: an aborted wait must not touch another turn's cache state.
        cacheGone = !(await statIdentity(cachePath).catch(() => null));
        if (cacheGone) ctx.forgetCache(cachePath, init);
      }
      await ctx.releaseCache(lease, cachePath, cacheGone).catch(() => {});
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
      ({ st } = await openTurn(locate(input.customKey, input.configHash), "custom", input, false, null));
    } else {
      // One pass gives the key of every prefix: the lookup key (history without its last
      // message) and, for a miss, the key of the whole history — unique to this
      // conversation, so first turns of different conversations never queue on one file.
      const chain = messageKeyChain(input.history);
      const n = input.history.length;
      st = null;
      let refusedAtLookup: CacheRefusal | null = null;
      if (n > 1) {
        const lookup = locate(autoKeyOf(chain.key(n - 1)), input.configHash);
        // Cheap look first; openTurn re-checks under the lock (the file may go meanwhile).
        // Anything there is looked at (a bad entry is removed under the lock, not skipped forever).
        // Remote hook: without a local file, the shared tier may have it (a cheap look first).
        const cached =
          (await inspectFile(cachePathOf(ctx.root, lookup), ctx.nfs)).kind !== "missing" || (await ctx.remote?.has(lookup, fingerprint));
        if (cached) ({ st, refused: refusedAtLookup } = await openTurn(lookup, "auto", input, true, chain));
      }
      st ??= (await openTurn(locate(autoKeyOf(chain.key(n)), input.configHash), "auto", input, false, chain, refusedAtLookup)).st;
    }
    if (!st) throw new Error("unreachable: openTurn returned no turn without onlyIfCached");
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
  }

  /** The new state the engine saved: at savePath, or rewritten in place at cachePath. */
  async function findNewState(st: TurnState): Promise<{ path: string; inPlace: boolean }> {
    const savedState = await inspectFile(st.handle.savePath, ctx.nfs);
    if (savedState.kind === "other") {
      throw new KvKeepError(
        "UNSAFE_PATH",
        `turn.savePath (${st.handle.savePath}) is a ${savedState.type}, not a regular file; kvkeep never commits through it. The turn was rolled back.`,
      );
    }
    if (savedState.kind === "file") {
      if (savedState.identity.size === 0) {
        await unlinkIfExists(st.handle.savePath);
        throw new KvKeepError("SAVE_EMPTY", `the engine saved an empty state at ${st.handle.savePath}; the turn was rolled back.`);
      }
      return { path: st.handle.savePath, inPlace: false };
    }
    const currentState = await inspectFile(st.cachePath, ctx.nfs);
    if (currentState.kind === "other") {
      throw new KvKeepError("UNSAFE_PATH", `the cache path ${st.cachePath} became a ${currentState.type} during the turn; nothing was committed.`);
    }
    const current = currentState.kind === "file" ? currentState.identity : null;
    if (current && !(st.beginIdentity && sameIdentity(current, st.beginIdentity))) {
      if (current.size === 0) throw new KvKeepError("SAVE_EMPTY", `the engine left an empty state at ${st.cachePath}.`);
      return { path: st.cachePath, inPlace: true };
    }
    throw new KvKeepError(
      "SAVE_MISSING",
      `no new state was saved for this turn; the engine must write it to turn.savePath (${st.handle.savePath}) before commitTurn. The turn was rolled back.`,
    );
  }

  /** Refuse to begin a turn on a cache a delete covered since the mark (removing what the turn installed). */
  async function assertNotDeletedWhileBeginning(cachePath: string, mark: DeleteMark, installed: boolean): Promise<void> {
    if (!(await ctx.deletedSince(cachePath, mark))) return;
    if (installed) await ctx.removeCache(cachePath);
    throw deletedWhileBeginningError();
  }

  /**
   * Install a new state (the commit protocol). A failure after the new state took the
   * cache file's place does not undo it (the previous state is gone by then): the new
   * state is committed, and the missing last step is logged.
   */
  async function install(params: InstallParams): Promise<ManifestEntry> {
    const { entry, unsettled } = await installCache(ctx.nfs, params);
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
  async function deletedSinceTurnBegan(st: TurnState, cachePath: string): Promise<boolean> {
    return ctx.deletedSince(cachePath, st.deleteMark);
  }

  /** Refuse to keep what a delete covering `paths` removed (or meant to) since the turn began. */
  async function assertNotDeleted(st: TurnState, installed: string | null, ...paths: string[]): Promise<void> {
    let deleted = false;
    for (const p of paths) deleted ||= await deletedSinceTurnBegan(st, p);
    if (!deleted) return;
    if (installed) await ctx.removeCache(installed);
    throw deletedDuringTurnError();
  }

  async function commitStatic(st: TurnState, result: CommitResult, chain: readonly string[] | null): Promise<CommittedOutcome> {
    const source = await findNewState(st);
    const entry = await install({
      source: source.path,
      target: st.cachePath,
      header: st.header,
      previous: source.inPlace ? null : st.committedEntry,
      messageCount: result.messageCount,
      tokenCount: result.tokenCount ?? null,
      chain,
      noReplace: false,
    });
    await assertNotDeleted(st, st.cachePath, st.cachePath);
    ctx.layers.recordTrusted(st.cachePath, st.init, entry, fingerprint);
    ctx.retention.noteCommitted(st.cachePath, entry, fingerprint);
    return { committed: true, cachePath: st.cachePath, messageCount: result.messageCount, keptExisting: false, file: identityOf(entry) };
  }

  /**
   * Move the turn's new state to the key of `history + reply`. If that target already holds
   * a committed cache (the same history, committed by another turn or process), keep it and
   * drop ours — never mix the two. The target is held only briefly by others (a sweep, a
   * preload, recovery) unless a turn resumes from it, which means it exists: so wait for it
   * when it does not exist, and keep theirs when it does.
   */
  async function commitAuto(
    st: TurnState,
    result: CommitResult & { kind: "autoRename" },
    target: CacheLocation,
  ): Promise<CommittedOutcome> {
    const targetPath = cachePathOf(ctx.root, target);
    // What the new state holds: the turn's history and the reply, whose key names the target.
    const chain = st.historyChain ? stateChain(st.historyChain, result.messageCount, [chainKeyOfAuto(target.cacheKey)]) : null;
    if (targetPath === st.cachePath) return commitStatic(st, { ...result, kind: "static" }, chain);
    const source = await findNewState(st);
    const targetInit = initKey(target);
    const targetHeader = manifestHeader(target, fingerprint);
    let outcome: CommittedOutcome;
    let targetLease: Lease | null = null;
    let targetExists = false;
    ctx.layers.refDir(targetPath);
    try {
      await ctx.ensureCacheDir(target);
      targetLease = ctx.locks.tryAcquire(targetPath);
      if (!targetLease && (await statIdentity(targetPath))) {
        log("debug", "commit target is in use and exists; keeping it", { targetPath });
        outcome = { committed: true, cachePath: targetPath, messageCount: result.messageCount, keptExisting: true, file: null };
      } else {
        targetLease ??= await ctx.locks.acquire(targetPath);
        const existing = await verifyCache(ctx.nfs, targetPath, targetHeader, { checksum: false });
        if (existing.ok) {
          ctx.layers.recordTrusted(targetPath, targetInit, existing.entry, fingerprint);
          outcome = { committed: true, cachePath: targetPath, messageCount: existing.entry.messageCount, keptExisting: true, file: null };
        } else {
          if (!existing.missing) {
            log("warn", "commit target not trusted; replacing it", { targetPath, reason: existing.reason });
            await ctx.removeCache(targetPath);
          }
          try {
            const entry = await install({
              source: source.path,
              target: targetPath,
              header: targetHeader,
              previous: null,
              messageCount: result.messageCount,
              tokenCount: result.tokenCount ?? null,
              chain,
              noReplace: true,
            });
            ctx.layers.recordTrusted(targetPath, targetInit, entry, fingerprint);
            ctx.retention.noteCommitted(targetPath, entry, fingerprint);
            outcome = { committed: true, cachePath: targetPath, messageCount: result.messageCount, keptExisting: false, file: identityOf(entry) };
          } catch (error) {
            if (!isKvKeepError(error, "TARGET_EXISTS")) throw error;
            // Lost a race with a process that has no lock to respect (JS fallback): theirs stays.
            outcome = { committed: true, cachePath: targetPath, messageCount: result.messageCount, keptExisting: true, file: null };
          }
        }
        await assertNotDeleted(st, outcome.keptExisting ? null : targetPath, targetPath, st.cachePath);
      }
      targetExists = (await statIdentity(targetPath).catch(() => undefined)) !== null;
    } finally {
      if (targetLease) await ctx.releaseCache(targetLease, targetPath, !targetExists);
      else ctx.layers.unrefDir(targetPath);
    }
    // The target is committed: from here a failure only leaves the superseded source
    // behind (a valid cache of the shorter history, for retention to evict) — never fails
    // the commit.
    try {
      await crashPoint("auto:after-target-installed");
      // The source is superseded by the target: remove it and every layer of it.
      if (!source.inPlace || outcome.keptExisting) await unlinkIfExists(source.path);
      await ctx.removeCache(st.cachePath);
      await crashPoint("auto:after-source-removed");
    } catch (error) {
      log("warn", "the auto commit is done, but its superseded source cache could not be removed", { cachePath: st.cachePath, error });
    }
    return outcome;
  }

  /** Failures that are the turn's own (nothing saved, cache deleted) roll back per the policy. */
  const TURN_FAILURES = new Set(["SAVE_MISSING", "SAVE_EMPTY", "DELETED_DURING_TURN"]);

  async function commitTurn(turn: TurnHandle, result: CommitResult): Promise<CommitOutcome> {
    const st = turns.get(turn);
    if (!st || st.status !== "open") return { committed: false, reason: "not-open" };
    const target = validateCommitResult(ctx, st, result);
    st.status = "committing";
    const work = (async (): Promise<CommitOutcome> => {
      let outcome: CommittedOutcome;
      try {
        await assertNotDeleted(st, null, st.cachePath);
        outcome =
          result.kind === "static"
            ? await commitStatic(st, result, result.history ? stateChain(messageKeyChain(result.history), result.messageCount) : null)
            : await commitAuto(st, result, target!);
      } catch (caught) {
        // A bug (no KvKeepError, no errno) is not a commit outcome: it rolls back and rejects.
        if (!isKvKeepError(caught) && errnoCode(caught) === undefined) {
          st.status = "open";
          await rollbackTurn(st, "keep-committed");
          throw caught;
        }
        let error = isKvKeepError(caught) ? caught : fsWriteError("committing the turn", caught);
        // A delete that removed the turn's files makes them look missing: say what happened.
        if (error.code !== "DELETED_DURING_TURN" && (await deletedSinceTurnBegan(st, st.cachePath))) {
          error = deletedDuringTurnError(error);
        }
        // Any failure in kvkeep's own I/O (disk full, EIO, …) says nothing against the last
        // committed state: keep it whatever the policy. A turn that saved nothing, or whose
        // cache was deleted, rolls back per the policy like any failed turn.
        st.status = "open";
        const cleared = await rollbackTurn(st, TURN_FAILURES.has(error.code) ? policy : "keep-committed");
        log("warn", "commit failed; the turn was rolled back", { cachePath: st.cachePath, code: error.code, error });
        return { committed: false, reason: failureReason(error), error, keptCommitted: !cleared };
      }
      st.status = "committed";
      ctx.retention.afterCommit(); // a background sweep when one is due; never awaited
      // Remote hook (write-behind): queue the upload of what this commit installed; never awaited.
      if (!outcome.keptExisting) ctx.remote?.afterCommit(outcome.cachePath, fingerprint);
      // An auto commit moved the cache away: its lock file goes too, so the directory can be pruned.
      await settle(st, result.kind === "autoRename", {
        outcome: "committed",
        cachePath: outcome.cachePath,
        messageCount: outcome.messageCount,
        tokenCount: result.tokenCount ?? null,
      });
      return outcome;
    })();
    st.settling = work;
    return work;
  }

  /** End a turn: release its lock and directory ref (pruning if its cache went), then say so. */
  async function settle(
    st: TurnState,
    removed: boolean,
    info: { outcome: "committed" | "rolledBack"; cachePath: string; messageCount?: number; tokenCount?: number | null },
  ): Promise<void> {
    await ctx.releaseCache(st.lease, st.cachePath, removed).catch((error: unknown) => {
      log("warn", "could not prune the cache directory", { cachePath: st.cachePath, error });
    });
    ctx.emit({
      type: "turnSettled",
      conversationId: st.handle.conversationId,
      scopeId,
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
   * Roll back per the session's policy. "clear" (and any turn that rewrote the cache in
   * place, or whose cache was deleted) removes all three layers; "keep-committed" only drops
   * the turn's unsaved state when the committed cache was never touched. True when the
   * cache was cleared.
   */
  async function rollbackTurn(st: TurnState, rollbackPolicy = policy): Promise<boolean> {
    if (st.status !== "open") return false;
    st.status = "rolledBack";
    await unlinkIfExists(st.handle.savePath).catch(() => {});
    let clear = rollbackPolicy === "clear" || (await deletedSinceTurnBegan(st, st.cachePath));
    if (!clear) {
      const now = await statIdentity(st.cachePath).catch(() => null);
      clear = !(now && st.beginIdentity && sameIdentity(now, st.beginIdentity));
    }
    if (clear) {
      try {
        await ctx.removeCache(st.cachePath);
      } catch (error) {
        ctx.forgetCache(st.cachePath, st.init);
        log("warn", "could not remove the cache file during rollback; it will be re-verified before use", {
          cachePath: st.cachePath,
          error,
        });
      }
    }
    await settle(st, clear, { outcome: "rolledBack", cachePath: st.cachePath });
    return clear;
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

