/**
 * The remote tier's deletes for one store (RemoteSync's third job): a delete the tier cannot
 * take now (Redis down) is recorded under the root (`.kvkeep/remote-deletes.json`, see
 * pending-remote-deletes.ts) and retried with backoff by the stores on the root — the next one
 * to open it, if this one closes or dies first. Until it is taken, no store on the root reads
 * what it covers back from the tier, and new commits it covers are uploaded only after it.
 */
import path from "node:path";
import { internalDir, type CacheLocation } from "../layout/paths.js";
import { type Logger, logLine } from "../logger.js";
import type { RemoteTier } from "../remote/types.js";
import type { StoreContext } from "./context.js";
import { type PendingDelete, PendingRemoteDeletes, type SyncDeleteTarget } from "./pending-remote-deletes.js";

type DeleteTarget = SyncDeleteTarget;

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

export class RemoteDeletes {
  readonly #tier: RemoteTier;
  readonly #ctx: () => StoreContext;
  /** Called when no delete is pending any more (uploads deferred behind them may go). */
  readonly #onSent: () => void;
  /**
   * Deletes the tier has not taken yet: the root's list (`.kvkeep/remote-deletes.json`, every
   * store's on this root, as last read) and this store's own until they are known taken.
   * See add and src/store/pending-remote-deletes.ts.
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
  #deleteRetry: ReturnType<typeof setTimeout> | null = null;
  readonly #deleteRetryFirstMs: number;
  #deleteRetryMs: number;
  #retrying: Promise<boolean> | null = null;
  #closing = false;

  constructor(tier: RemoteTier, ctx: () => StoreContext, onSent: () => void, options: { deleteRetryFirstMs?: number | undefined } = {}) {
    this.#tier = tier;
    this.#ctx = ctx;
    this.#onSent = onSent;
    this.#deleteRetryFirstMs = this.#deleteRetryMs = options.deleteRetryFirstMs ?? DELETE_RETRY_FIRST_MS;
  }

  get #logger(): Logger {
    return this.#ctx().logger;
  }

  /** Called by the store once its context exists: look at the root's list, and send what it holds. */
  start(): void {
    this.#started = this.refresh().then(() => {
      if (this.pendingTargets().length > 0) void this.retry();
    });
  }

  /**
   * After `store.delete` (its uploads dropped by RemoteSync): delete the remote copies (a
   * tombstone refuses uploads ordered before it). The target is pending in this store before
   * the first attempt, and recorded in the root's list (`.kvkeep/remote-deletes.json`) before
   * it too, and stays so until the tier takes it — retried in the background (1 s, doubling
   * to 60 s) while a store on the root is open, once more at close, and by the next store that
   * opens the root after this one closed or died. While it is pending, no store on the root
   * reads what it covers back from the tier (Redis may come back from a snapshot holding it),
   * and new commits it covers are uploaded only after it went through.
   */
  async add(target: DeleteTarget): Promise<void> {
    const ctx = this.#ctx();
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
    if (await this.retry()) return;
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
    this.#pendingFile ??= new PendingRemoteDeletes(ctx.root, ctx.fsBackend, ctx.logger);
    return this.#pendingFile;
  }

  /**
   * Read the root's list (one stat when unchanged). A delete of this store's that was in it
   * and is gone was taken by another store. Starts the retries when the list holds deletes
   * (any store on the root sends them). An unreadable list keeps what was read before.
   */
  async refresh(): Promise<void> {
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
  pendingEntries(): PendingDelete[] {
    const ids = new Set(this.#onDisk.map((d) => d.id));
    return [...this.#onDisk, ...this.#own.filter((o) => !ids.has(o.entry.id)).map((o) => o.entry)];
  }

  pendingTargets(): DeleteTarget[] {
    return this.pendingEntries().map((d) => d.target);
  }

  /** Null when the tier took the delete, else why not. */
  async #remove(target: DeleteTarget): Promise<string | null> {
    const removed = await this.#tier
      .remove("all" in target ? { all: true } : { scopeId: target.scopeId, cacheKey: target.kvCacheKey, modelId: target.modelId })
      .catch((error: unknown) => ({ ok: false as const, reason: String(error) }));
    return removed.ok ? null : removed.reason;
  }

  /** Whether a pending delete (this store's, or any on the root as last read) covers `loc`. */
  covers(loc: CacheLocation): boolean {
    return this.pendingTargets().some((target) => covers(target, loc));
  }

  #scheduleDeleteRetry(): void {
    if (this.#deleteRetry || this.#closing) return;
    this.#deleteRetry = setTimeout(() => {
      this.#deleteRetry = null;
      void this.retry();
    }, this.#deleteRetryMs);
    // A pending retry alone must not keep the process alive.
    (this.#deleteRetry as { unref?: () => void }).unref?.();
  }

  /**
   * Send the pending deletes in order, one sender at a time in this store (a delete kept
   * while one runs is taken by the same run) and on the root (the send lock); true when
   * none is left. On a failure the rest wait for the timer.
   */
  retry(): Promise<boolean> {
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
    const lock = await this.#ctx().fsBackend.lockFile(path.join(internalDir(this.#ctx().root), "remote-deletes.send.lock"), "exclusive", {
      under: this.#ctx().root,
    }).catch(() => null);
    try {
      for (;;) {
        await this.refresh();
        const next = this.pendingEntries()[0];
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
    this.#onSent();
    return true;
  }

  /** Stop the retries; send the pending deletes once more (they stay recorded under the root if that fails). */
  async close(): Promise<void> {
    this.#closing = true;
    if (this.#deleteRetry) clearTimeout(this.#deleteRetry);
    this.#deleteRetry = null;
    await this.#started;
    await this.#retrying;
    if (this.pendingEntries().length > 0 && !(await this.retry())) {
      this.#logger.warn(
        logLine("closing with remote copies still not deleted; the deletes stay recorded under the root, and the next store on it sends them (or run kvkeep rm --remote)", {
          targets: this.pendingTargets().map(describeTarget),
        }),
      );
    }
  }
}

function describeTarget(target: DeleteTarget): string {
  if ("all" in target) return "all";
  const key = target.modelId === undefined ? target.kvCacheKey : `${target.kvCacheKey} (${target.modelId})`;
  return target.scopeId === null ? key : `${key} in scope ${target.scopeId}`;
}
