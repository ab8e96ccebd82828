/**
 * The store's side of the remote tier (`openKvCacheStore({ remote })`): the one owner of
 * what moves between the local root and the tier. The session and the store call it at
 * four hook points, nothing else touches the tier:
 *
 * - `afterCommit` (commitTurn, after a state was installed): take the commit's place in the
 *   fleet's order now (`tier.reserve`, not awaited) and queue the upload; a turn never waits.
 *   The job uploads the committed file through a descriptor checked against its manifest.
 * - `readThrough` (beginTurn, under the cache's lock, on a local miss): stream the remote
 *   state into a temp file beside the cache; the tier verifies size and XXH64, the record's
 *   identity (model, fingerprint, config, key) is checked, and the file is installed
 *   through the normal commit path (`installCache`); the turn proceeds as a hit.
 * - `pullPrefix` (findPrefix / borrowPrefix, when the local index has nothing as long): the
 *   remote state covering the longest prefix is fetched the same way into its own place
 *   under the root, then found by the local index.
 * - `afterDelete` (store.delete): queued uploads of the target are dropped and the remote
 *   copy deleted, leaving a tombstone so an upload still in flight cannot bring it back. A
 *   delete the tier cannot take now (Redis down) is recorded under the root
 *   (`.kvkeep/remote-deletes.json`) and retried with backoff by the stores on the root — the
 *   next one to open it, if this one closes or dies first; until it succeeds no store on the
 *   root reads what it covers back from the tier — else the conversation the user just
 *   deleted would come back at its next turn once Redis returns — and new commits it covers
 *   are uploaded only after it (its late tombstone would remove them).
 */
import { constants as fsConstants, promises as fs } from "node:fs";
import type { FileHandle } from "node:fs/promises";
import path from "node:path";
import { statIdentity, unlinkIfExists } from "../durable/files.js";
import { ownTempPath } from "../durable/temp-owner.js";
import { type CacheLocation, cacheKeyDir, cachePathOf, internalDir, isWithin, parseCachePath } from "../layout/paths.js";
import { type Logger, logLine } from "../logger.js";
import { type ManifestEntry, sameIdentity } from "../manifest/format.js";
import { installCache, readManifest, removeCacheFiles } from "../manifest/store.js";
import type { RemoteCacheId, RemoteTier } from "../remote/types.js";
import { WriteBehind } from "../remote/write-behind.js";
import { type PendingDelete, PendingRemoteDeletes, type SyncDeleteTarget } from "./pending-remote-deletes.js";
import { manifestHeader } from "../session/trust.js";

export type { SyncDeleteTarget };
type DeleteTarget = SyncDeleteTarget;
import type { StoreContext } from "./context.js";
import { initKey } from "./layers.js";

/** Uploads waiting at most (one per cache; the oldest is dropped past this). */
export const DEFAULT_MAX_PENDING_UPLOADS = 64;

/** First retry of a remote delete the tier could not take; doubled per failure up to the max. */
const DELETE_RETRY_FIRST_MS = 1000;
const DELETE_RETRY_MAX_MS = 60_000;

/** Whether a delete of `target` covers the cache at `loc`. */
function covers(target: DeleteTarget, loc: CacheLocation): boolean {
  if ("all" in target) return true;
  return (
    target.scopeId === loc.scopeId &&
    target.kvCacheKey === loc.cacheKey &&
    (target.modelId === undefined || target.modelId === loc.modelId)
  );
}

interface UploadJob {
  id: RemoteCacheId;
  reservation: ReturnType<RemoteTier["reserve"]>;
}

/** A prefix query as the store's findPrefix/borrowPrefix checked it. */
export interface RemotePrefixQuery {
  /** The isolation scope's id (null: the shared space): only its states are looked up. */
  scopeId: string | null;
  modelId: string;
  fingerprint: string | null;
  configHash: string;
  /** Keys 1…n of the history (element j = key of its first j + 1 messages). */
  historyKeys: readonly string[];
  minCommonMessages: number;
  exactAncestor: boolean;
  exclude: ReadonlySet<string>;
}

/** Knobs for tests. @internal */
export interface RemoteSyncInternals {
  /** First retry of a remote delete the tier could not take (default 1 s). */
  deleteRetryFirstMs?: number | undefined;
}

const cacheIdOf = (loc: CacheLocation, fingerprint: string | null): RemoteCacheId => ({
  scopeId: loc.scopeId,
  modelId: loc.modelId,
  fingerprint,
  configHash: loc.configHash,
  cacheKey: loc.cacheKey,
});

export class RemoteSync {
  readonly tier: RemoteTier;
  readonly #ctx: () => StoreContext;
  readonly #uploads: WriteBehind<UploadJob>;
  /**
   * Deletes the tier has not taken yet: the root's list (`.kvkeep/remote-deletes.json`, every
   * store's on this root, as last read) and this store's own until they are known taken.
   * See afterDelete and src/store/pending-remote-deletes.ts.
   */
  #onDisk: PendingDelete[] = [];
  /**
   * This store's deletes not yet known taken. `persisted`: the count of writes to the root's
   * list when it was recorded there (0: memory only, so far) — a read begun before that write
   * cannot tell whether another store took it.
   */
  #own: Array<{ entry: PendingDelete; persisted: number }> = [];
  /** Writes of this store to the root's list so far. */
  #listWrites = 0;
  #pendingFile: PendingRemoteDeletes | null = null;
  /** The first look at the root's list (close waits for it). */
  #started: Promise<void> = Promise.resolve();
  /** Commits a pending delete covers: uploaded once it is taken (see afterCommit). */
  readonly #deferredUploads = new Map<string, string | null>();
  #deleteRetry: ReturnType<typeof setTimeout> | null = null;
  readonly #deleteRetryFirstMs: number;
  #deleteRetryMs: number;
  #retrying: Promise<boolean> | null = null;
  #closing = false;

  constructor(tier: RemoteTier, ctx: () => StoreContext, options: { maxPendingUploads?: number | undefined } & RemoteSyncInternals = {}) {
    this.tier = tier;
    this.#deleteRetryFirstMs = this.#deleteRetryMs = options.deleteRetryFirstMs ?? DELETE_RETRY_FIRST_MS;
    this.#ctx = ctx;
    this.#uploads = new WriteBehind((cachePath, job) => this.#upload(cachePath, job), {
      maxPending: options.maxPendingUploads ?? DEFAULT_MAX_PENDING_UPLOADS,
      concurrency: 1,
      onDiscard: (cachePath, reason) => {
        if (reason !== "replaced") this.#logger.debug(logLine("remote upload dropped", { cachePath, reason }));
      },
    });
  }

  get #logger(): Logger {
    return this.#ctx().logger;
  }

  // ── write-behind ─────────────────────────────────────────────────────────────────────

  /** A commit installed a new state at `cachePath`: queue its upload (never waits). */
  afterCommit(cachePath: string, fingerprint: string | null): void {
    const loc = parseCachePath(this.#ctx().root, cachePath);
    if (!loc) return;
    if (this.#deletePending(loc)) {
      // A delete the tier has not taken yet takes its generation when it finally goes
      // through, and would remove this commit's upload too: upload after it instead.
      this.#deferredUploads.set(cachePath, fingerprint);
      return;
    }
    const id = cacheIdOf(loc, fingerprint);
    // The generation is asked for now, so the fleet orders this commit by when it happened.
    const reservation = this.tier.reserve(id).catch(() => ({ ok: false, reason: "unavailable" }) as const);
    this.#uploads.push(cachePath, { id, reservation });
  }

  async #upload(cachePath: string, job: UploadJob): Promise<void> {
    const reserved = await job.reservation;
    if (!reserved.ok) return; // the tier is down: the next commit tries again
    let handle: FileHandle | null = null;
    try {
      handle = await fs.open(cachePath, fsConstants.O_RDONLY | fsConstants.O_NOFOLLOW).catch(() => null);
      if (!handle) return; // evicted, deleted or moved on since
      const st = await handle.stat({ bigint: true });
      const identity = { size: Number(st.size), ino: st.ino.toString(), mtimeNs: st.mtimeNs.toString() };
      const read = await readManifest(cachePath);
      if (!("manifest" in read)) return;
      const { manifest } = read;
      // The descriptor's file must be the one a manifest slot describes, for this identity.
      const entry = [manifest.current, manifest.pending].find((e) => e !== null && sameIdentity(e, identity));
      if (!st.isFile() || !entry || entry.messageCount === 0) return;
      if (manifest.modelId !== job.id.modelId || manifest.configHash !== job.id.configHash) return;
      if ((manifest.scope ?? null) !== (job.id.scopeId ?? null)) return;
      if (manifest.cacheKey !== job.id.cacheKey || manifest.fingerprint !== job.id.fingerprint) return;
      const outcome = await this.tier.upload(
        reserved.ticket,
        {
          id: job.id,
          size: entry.size,
          xxh64: entry.xxh64,
          messageCount: entry.messageCount,
          tokenCount: entry.tokenCount,
          chain: entry.chain ?? null,
          committedAt: entry.committedAt,
        },
        handle,
      );
      this.#logger.debug(logLine("remote upload", { cachePath, ...outcome }));
    } catch (error) {
      this.#logger.warn(logLine("remote upload failed", { cachePath, error }));
    } finally {
      await handle?.close().catch(() => {});
    }
  }

  // ── read-through ─────────────────────────────────────────────────────────────────────

  /** Whether the tier has the state of `loc` (a cheap look before taking a lock for it). */
  async has(loc: CacheLocation, fingerprint: string | null): Promise<boolean> {
    await this.#refreshPending();
    if (this.#deletePending(loc)) return false;
    return this.tier.has(cacheIdOf(loc, fingerprint)).catch(() => false);
  }

  /**
   * Fetch the remote state of `loc` into `cachePath` and install it as a committed cache.
   * The caller holds the cache's lock and its directory exists, and nothing trusted is at
   * `cachePath`. Resolves to the installed entry, or null on any miss (never rejects).
   */
  async readThrough(cachePath: string, loc: CacheLocation, fingerprint: string | null): Promise<ManifestEntry | null> {
    const ctx = this.#ctx();
    await this.#refreshPending();
    if (this.#deletePending(loc)) return null;
    const temp = ownTempPath(cachePath);
    try {
      const got = await this.tier.fetchTo(cacheIdOf(loc, fingerprint), temp);
      if (!got.hit) return null;
      const { state } = got;
      const { entry, unsettled } = await installCache(ctx.nfs, {
        source: temp,
        target: cachePath,
        header: manifestHeader(loc, fingerprint),
        previous: null,
        messageCount: state.messageCount,
        tokenCount: state.tokenCount,
        chain: state.chain,
        noReplace: false,
      });
      if (unsettled) {
        ctx.logger.warn(logLine("a state from the remote tier is installed, but a last step of its commit failed; settled at its next use", { cachePath, error: unsettled }));
      }
      if (entry.xxh64 !== state.xxh64 || entry.size !== state.size) {
        // The tier verified the bytes it wrote; the file must still be them.
        await removeCacheFiles(cachePath);
        ctx.logger.warn(logLine("a state fetched from the remote tier changed on disk before install; dropped", { cachePath }));
        return null;
      }
      ctx.layers.recordTrusted(cachePath, initKey(loc), entry, fingerprint);
      ctx.retention.noteCommitted(cachePath, entry, fingerprint);
      ctx.logger.debug(logLine("installed a state from the remote tier", { cachePath, messageCount: entry.messageCount }));
      return entry;
    } catch (error) {
      ctx.logger.warn(logLine("could not install a state from the remote tier; going on without it", { cachePath, error }));
      return null;
    } finally {
      await unlinkIfExists(temp).catch(() => {});
    }
  }

  /**
   * Ask the tier for a state sharing more leading messages with the query's history than
   * `localBest`, and install it at its own place under the root (only where nothing is, and
   * only if nobody holds that place). True when one was installed.
   */
  async pullPrefix(query: RemotePrefixQuery, localBest: number): Promise<boolean> {
    const ctx = this.#ctx();
    const hit = await this.tier
      .lookupPrefix(
        { scopeId: query.scopeId, modelId: query.modelId, fingerprint: query.fingerprint, configHash: query.configHash },
        query.historyKeys,
        { minMessages: Math.max(localBest + 1, query.minCommonMessages), exactAncestor: query.exactAncestor },
      )
      .catch(() => null);
    if (!hit) return false;
    const loc: CacheLocation = { scopeId: query.scopeId, cacheKey: hit.cacheKey, modelId: query.modelId, configHash: query.configHash };
    await this.#refreshPending();
    if (this.#deletePending(loc)) return false;
    const cachePath = cachePathOf(ctx.root, loc);
    if (query.exclude.has(cachePath) || (await statIdentity(cachePath).catch(() => null))) return false;
    ctx.layers.refDir(cachePath);
    let lease = null;
    let installed = false;
    try {
      await ctx.ensureCacheDir(loc);
      lease = ctx.locks.tryAcquire(cachePath);
      if (!lease || (await statIdentity(cachePath))) return false;
      installed = (await this.readThrough(cachePath, loc, query.fingerprint)) !== null;
      return installed;
    } catch (error) {
      ctx.logger.debug(logLine("remote prefix source not installed", { cachePath, error }));
      return false;
    } finally {
      await ctx.releaseCache(lease, cachePath, !installed).catch(() => {});
    }
  }

  // ── deletes and close ────────────────────────────────────────────────────────────────

  /** Called by the store once its context exists: look at the root's list, and send what it holds. */
  start(): void {
    this.#started = this.#refreshPending().then(() => {
      if (this.#pendingTargets().length > 0) void this.#retryDeletes();
    });
  }

  /**
   * After `store.delete`: drop waiting uploads it covers and delete the remote copies (a
   * tombstone refuses uploads ordered before it). The target is pending in this store before
   * the first attempt, and recorded in the root's list (`.kvkeep/remote-deletes.json`) before
   * it too, and stays so until the tier takes it — retried in the background (1 s, doubling
   * to 60 s) while a store on the root is open, once more at close, and by the next store that
   * opens the root after this one closed or died. While it is pending, no store on the root
   * reads what it covers back from the tier (Redis may come back from a snapshot holding it),
   * and new commits it covers are uploaded only after it went through.
   */
  async afterDelete(target: DeleteTarget): Promise<void> {
    const ctx = this.#ctx();
    if ("all" in target) {
      this.#uploads.cancel(() => true);
      this.#deferredUploads.clear();
    } else {
      const dir = path.join(cacheKeyDir(ctx.root, target.kvCacheKey, target.scopeId), target.modelId ?? "");
      this.#uploads.cancel((cachePath) => isWithin(dir, cachePath));
      for (const cachePath of this.#deferredUploads.keys()) if (isWithin(dir, cachePath)) this.#deferredUploads.delete(cachePath);
    }
    // A copy: the caller may reuse its object.
    const kept: DeleteTarget =
      "all" in target ? { all: true } : { scopeId: target.scopeId, kvCacheKey: target.kvCacheKey, modelId: target.modelId };
    // Pending here at once (no read-back while it is being recorded), then on disk.
    const own = { entry: { id: PendingRemoteDeletes.newId(), target: kept }, persisted: 0 };
    if ("all" in kept) this.#own = []; // everything covers every earlier one
    this.#own.push(own);
    try {
      await this.#file().add(own.entry);
      own.persisted = ++this.#listWrites;
    } catch (error) {
      ctx.logger.warn(
        logLine("could not record the pending remote delete under the root; only this store honours it until Redis takes it", {
          target: describeTarget(kept),
          error,
        }),
      );
    }
    if (await this.#retryDeletes()) return;
    if (!this.#own.includes(own)) return; // taken; an earlier one is what failed
    ctx.logger.warn(
      logLine(
        this.#closing
          ? "the remote copy could not be deleted, and the store is closing; the delete stays recorded under the root for the next store to send (or run kvkeep rm --remote)"
          : "the remote copy could not be deleted yet; retrying in the background, and no store on this root reads it back meanwhile",
        { target: describeTarget(kept), reason: this.#lastDeleteFailure },
      ),
    );
  }

  #lastDeleteFailure = "";
  /** Ids of deletes that failed at least once (their success is logged). */
  readonly #failedDeletes = new Set<string>();

  #file(): PendingRemoteDeletes {
    const ctx = this.#ctx();
    this.#pendingFile ??= new PendingRemoteDeletes(ctx.root, ctx.nfs, ctx.logger);
    return this.#pendingFile;
  }

  /**
   * Read the root's list (one stat when unchanged). A delete of this store's that was in it
   * and is gone was taken by another store. Starts the retries when the list holds deletes
   * (any store on the root sends them). An unreadable list keeps what was read before.
   */
  async #refreshPending(): Promise<void> {
    const writesBefore = this.#listWrites;
    let onDisk: PendingDelete[];
    try {
      onDisk = await this.#file().read();
    } catch (error) {
      this.#logger.debug(logLine("could not read the pending remote deletes; using the last list read", { error }));
      return;
    }
    this.#onDisk = onDisk;
    const ids = new Set(onDisk.map((d) => d.id));
    this.#own = this.#own.filter((o) => o.persisted === 0 || o.persisted > writesBefore || ids.has(o.entry.id));
    if (onDisk.length > 0) this.#scheduleDeleteRetry();
  }

  /** Every pending delete, oldest first: the root's list, then this store's not recorded there. */
  #pendingEntries(): PendingDelete[] {
    const ids = new Set(this.#onDisk.map((d) => d.id));
    return [...this.#onDisk, ...this.#own.filter((o) => !ids.has(o.entry.id)).map((o) => o.entry)];
  }

  #pendingTargets(): DeleteTarget[] {
    return this.#pendingEntries().map((d) => d.target);
  }

  /** Null when the tier took the delete, else why not. */
  async #remove(target: DeleteTarget): Promise<string | null> {
    const removed = await this.tier
      .remove("all" in target ? { all: true } : { scopeId: target.scopeId, cacheKey: target.kvCacheKey, modelId: target.modelId })
      .catch((error: unknown) => ({ ok: false as const, reason: String(error) }));
    return removed.ok ? null : removed.reason;
  }

  /** Whether a pending delete (this store's, or any on the root as last read) covers `loc`. */
  #deletePending(loc: CacheLocation): boolean {
    return this.#pendingTargets().some((target) => covers(target, loc));
  }

  #scheduleDeleteRetry(): void {
    if (this.#deleteRetry || this.#closing) return;
    this.#deleteRetry = setTimeout(() => {
      this.#deleteRetry = null;
      void this.#retryDeletes();
    }, this.#deleteRetryMs);
    // A pending retry alone must not keep the process alive.
    (this.#deleteRetry as { unref?: () => void }).unref?.();
  }

  /**
   * Send the pending deletes in order, one sender at a time in this store (a delete kept
   * while one runs is taken by the same run) and on the root (the send lock); true when
   * none is left. On a failure the rest wait for the timer.
   */
  #retryDeletes(): Promise<boolean> {
    this.#retrying ??= this.#retryInOrder()
      .catch((error: unknown) => {
        this.#logger.warn(logLine("sending pending remote deletes failed; retrying later", { error }));
        this.#scheduleDeleteRetry();
        return false;
      })
      .finally(() => (this.#retrying = null));
    return this.#retrying;
  }

  async #retryInOrder(): Promise<boolean> {
    // One sender on the root: a delete sent twice would take two generations, and the late
    // tombstone could remove an upload made in between.
    const lock = await this.#ctx().nfs.lockFile(path.join(internalDir(this.#ctx().root), "remote-deletes.send.lock"), "exclusive", {
      under: this.#ctx().root,
    }).catch(() => null);
    try {
      for (;;) {
        await this.#refreshPending();
        const next = this.#pendingEntries()[0];
        if (!next) break;
        const failed = await this.#remove(next.target);
        if (failed !== null) {
          this.#lastDeleteFailure = failed;
          this.#failedDeletes.add(next.id);
          this.#deleteRetryMs = Math.min(this.#deleteRetryMs * 2, Math.max(DELETE_RETRY_MAX_MS, this.#deleteRetryFirstMs));
          this.#logger.debug(logLine("remote delete failed", { target: describeTarget(next.target), reason: failed, nextMs: this.#deleteRetryMs }));
          this.#scheduleDeleteRetry();
          return false;
        }
        // Taken: off the root's list (by id: the list may have changed meanwhile) and this store's.
        if (this.#onDisk.some((d) => d.id === next.id)) {
          await this.#file()
            .remove(next.id)
            .catch((error: unknown) => this.#logger.warn(logLine("a remote delete went through but stays in the pending list; it will be sent again", { error })));
        }
        this.#onDisk = this.#onDisk.filter((d) => d.id !== next.id);
        this.#own = this.#own.filter((o) => o.entry.id !== next.id);
        if (this.#failedDeletes.delete(next.id)) {
          this.#logger.info(logLine("a remote copy that could not be deleted earlier is deleted now", { target: describeTarget(next.target) }));
        }
      }
    } finally {
      lock?.release();
    }
    this.#deleteRetryMs = this.#deleteRetryFirstMs;
    this.#releaseDeferredUploads();
    return true;
  }

  /** Queue the uploads deferred behind deletes that are no longer pending. */
  #releaseDeferredUploads(): void {
    const root = this.#ctx().root;
    for (const [cachePath, fingerprint] of this.#deferredUploads) {
      const loc = parseCachePath(root, cachePath);
      if (loc && this.#deletePending(loc)) continue;
      this.#deferredUploads.delete(cachePath);
      this.afterCommit(cachePath, fingerprint);
    }
  }

  /** Send the pending deletes once more, finish the uploads queued so far, then close the tier. */
  async close(): Promise<void> {
    this.#closing = true;
    if (this.#deleteRetry) clearTimeout(this.#deleteRetry);
    this.#deleteRetry = null;
    await this.#started;
    // Deletes first: an upload a pending delete covers is sent only after it (or never).
    await this.#retrying;
    if (this.#pendingEntries().length > 0 && !(await this.#retryDeletes())) {
      this.#logger.warn(
        logLine("closing with remote copies still not deleted; the deletes stay recorded under the root, and the next store on it sends them (or run kvkeep rm --remote)", {
          targets: this.#pendingTargets().map(describeTarget),
        }),
      );
    }
    this.#deferredUploads.clear();
    await this.#uploads.drain();
    await this.tier.close();
  }
}

function describeTarget(target: DeleteTarget): string {
  if ("all" in target) return "all";
  const key = target.modelId === undefined ? target.kvCacheKey : `${target.kvCacheKey} (${target.modelId})`;
  return target.scopeId === null ? key : `${key} in scope ${target.scopeId}`;
}
