/**
 * A turn's opening: lock the cache, establish trust in what is there (else ask the remote
 * tier, else prime), and make the turn's state — refusing a cache a delete covered meanwhile.
 */
import { isKvKeepError, KvKeepError } from "../errors.js";
import { inspectFile, statIdentity, unlinkIfExists } from "../durable/files.js";
import { autoConversationId, autoKeyOf, type KeyChain, messageKeyChain } from "../keys/auto-key.js";
import { type CacheLocation, cachePathOf } from "../layout/paths.js";
import { ownTempPath } from "../durable/temp-owner.js";
import type { Manifest, ManifestEntry } from "../manifest/format.js";
import type { MemoryFile } from "../native/index.js";
import type { Lease } from "../locks/path-locks.js";
import { initKey } from "../store/layers.js";
import { establishTrust, manifestHeader } from "../store/trust.js";
import type { DeleteMark } from "../store/deletes.js";
import type { BeginTurnInput, CacheRefusal, TurnHandle } from "../types.js";
import { withMemoryState } from "./new-state.js";
import { deletedWhileBeginningError, install, type SessionEnv, type TurnState } from "./turn.js";
import { validateBeginInput } from "./validate.js";

/**
 * Lock the cache at `loc`, make sure a trusted file is there (verify, else prime), and
 * open a turn on it. With `onlyIfCached`, returns no turn instead of priming. `refused`:
 * the file found there and refused (removed), else `refusedBefore` — what an earlier
 * look for this turn refused (auto mode's lookup key).
 */
export async function openTurn(
  env: SessionEnv,
  loc: CacheLocation,
  kind: "custom" | "auto",
  input: BeginTurnInput,
  onlyIfCached: boolean,
  historyChain: KeyChain | null,
  refusedBefore: CacheRefusal | null = null,
): Promise<{ st: TurnState; refused: CacheRefusal | null } | { st: null; refused: CacheRefusal | null }> {
  const { ctx, fingerprint, log, scopedId } = env;
  const cachePath = cachePathOf(ctx.root, loc);
  const init = initKey(loc);
  ctx.layers.refDir(cachePath);
  let lease: Lease | null = null;
  let deleteMark: DeleteMark | null = null;
  let memory: MemoryFile | null = null;
  try {
    // The directory first: it refuses symlinks, and the OS lock file is created inside it.
    await ctx.ensureCacheDir(loc);
    lease = await ctx.locks.acquire(cachePath, input.signal);
    deleteMark = await ctx.deleteMark();
    ctx.assertOpen();
    const header = manifestHeader(loc, fingerprint);
    let primed = false;
    const trust = await establishTrust(ctx, cachePath, loc, fingerprint, { wholeOnly: env.chunking === null });
    let committedEntry: ManifestEntry | null = trust.trusted;
    const refused = trust.refused ?? refusedBefore;
    // Remote hook (read-through): a local miss asks the shared tier; a verified state is
    // installed here under this lock and the turn goes on as a hit.
    let fetched = false;
    if (!committedEntry && ctx.remote) {
      committedEntry = await ctx.remote.readThrough(cachePath, loc, fingerprint, { chunked: env.chunking !== null });
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
      if (env.chunking) {
        committedEntry = await primeInMemory(env, input, cachePath, header, deleteMark);
      } else {
        committedEntry = await primeToFile(env, input, cachePath, header, deleteMark);
      }
      ctx.layers.recordTrusted(cachePath, init, committedEntry, fingerprint);
      ctx.retention.noteCommitted(cachePath, committedEntry, fingerprint);
      // A delete that started after the mark may have scanned before the install: take it back.
      await assertNotDeletedWhileBeginning(env, cachePath, deleteMark, true);
      primed = true;
      log("debug", "primed cache", { cachePath, layout: committedEntry.chunks ? "chunked" : "whole" });
    } else {
      // A state fetched from the remote tier was installed here: a delete since the mark takes it back.
      await assertNotDeletedWhileBeginning(env, cachePath, deleteMark, fetched);
      await ctx.retention.noteUsed(cachePath, committedEntry); // a load is a use (retention's LRU)
    }

    // A chunked session's engine saves into memory (the commit stores only what is new).
    memory = env.chunking ? createTurnMemory(env) : null;
    const handle: TurnHandle = Object.freeze({
      cachePath,
      layout: committedEntry.chunks ? ("chunked" as const) : ("whole" as const),
      savedCount,
      savePath: memory?.path ?? ownTempPath(cachePath),
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
      memory,
    };
    lease = null; // owned by the turn from here on
    memory = null;
    return { st, refused };
  } catch (caught) {
    let error = caught;
    memory?.close();
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

/**
 * Open a turn for `input` (validated here): custom mode on its key; auto mode on the key of
 * the history without its last message when a cache is there (here or in the remote tier),
 * else primed at the key of the whole history.
 */
export async function beginTurn(env: SessionEnv, input: BeginTurnInput): Promise<TurnState> {
  const { ctx, fingerprint, locate } = env;
  ctx.assertOpen();
  validateBeginInput(input);
  if (input.signal?.aborted) {
    throw new KvKeepError("ABORTED", "beginTurn was aborted before it started; nothing was changed.", {
      cause: input.signal.reason,
    });
  }
  let st: TurnState | null;
  if (input.kind === "custom") {
    ({ st } = await openTurn(env, locate(input.customKey, input.configHash), "custom", input, false, null));
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
        (await inspectFile(cachePathOf(ctx.root, lookup), ctx.fsBackend)).kind !== "missing" || (await ctx.remote?.has(lookup, fingerprint));
      if (cached) ({ st, refused: refusedAtLookup } = await openTurn(env, lookup, "auto", input, true, chain));
    }
    st ??= (await openTurn(env, locate(autoKeyOf(chain.key(n)), input.configHash), "auto", input, false, chain, refusedAtLookup)).st;
  }
  if (!st) throw new Error("unreachable: openTurn returned no turn without onlyIfCached");
  return st;
}

/** Refuse to begin a turn on a cache a delete covered since the mark (removing what the turn installed). */
export async function assertNotDeletedWhileBeginning(env: SessionEnv, cachePath: string, mark: DeleteMark, installed: boolean): Promise<void> {
  const { ctx } = env;
  if (!(await ctx.deletedSince(cachePath, mark))) return;
  if (installed) await ctx.removeCache(cachePath);
  throw deletedWhileBeginningError();
}

type PrimeHeader = Omit<Manifest, "current" | "pending" | "format">;

/** Prime through a temp file beside the cache (a whole-file session): the engine saves there, kvkeep installs it. */
async function primeToFile(env: SessionEnv, input: BeginTurnInput, cachePath: string, header: PrimeHeader, deleteMark: DeleteMark): Promise<ManifestEntry> {
  const { ctx } = env;
  const primeTemp = ownTempPath(cachePath);
  try {
    await input.primeIfMissing(primeTemp);
    await assertNotDeletedWhileBeginning(env, cachePath, deleteMark, false);
    const primeState = await inspectFile(primeTemp, ctx.fsBackend);
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
    return await install(env, { source: primeTemp, target: cachePath, header, previous: null, messageCount: 0, tokenCount: null, chain: null, noReplace: false });
  } catch (error) {
    await unlinkIfExists(primeTemp).catch(() => {});
    throw error;
  }
}

/**
 * Prime through an in-memory file (a chunked session): the engine saves into it, kvkeep
 * stores its chunks and tail and installs the manifest. The in-memory file is closed after.
 */
async function primeInMemory(env: SessionEnv, input: BeginTurnInput, cachePath: string, header: PrimeHeader, deleteMark: DeleteMark): Promise<ManifestEntry> {
  const memory = createTurnMemory(env);
  try {
    await input.primeIfMissing(memory.path);
    await assertNotDeletedWhileBeginning(env, cachePath, deleteMark, false);
    const nothing = (): KvKeepError =>
      new KvKeepError(
        "NO_CACHE_WRITTEN",
        `primeIfMissing resolved but no state was written to ${memory.path} (an in-memory file); the engine must save its state to the path it is given.`,
      );
    return await withMemoryState(
      env,
      memory,
      cachePath,
      (state) =>
        install(env, {
          source: state.path,
          target: cachePath,
          header,
          previous: null,
          messageCount: 0,
          tokenCount: null,
          chain: null,
          chunks: state.chunks,
          noReplace: false,
        }),
      nothing,
    );
  } finally {
    memory.close();
  }
}

/** A new in-memory file for a turn of a chunked session (which exists only where they can be made). */
export function createTurnMemory(env: SessionEnv): MemoryFile {
  const memory = env.ctx.fsBackend.createMemoryFile("kvkeep-turn");
  if (memory === null) throw new KvKeepError("IO_ERROR", "this store could make in-memory files when the session was created and no longer can; create the session again.");
  return memory;
}
