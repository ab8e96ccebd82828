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
import { type CacheLocation, cacheKeyDir, cachePathOf, isWithin, parseCachePath } from "../layout/paths.js";
import { type Logger, logLine } from "../logger.js";
import { sameIdentity } from "../durable/identity.js";
import { verifyChunkBytes } from "../chunkfiles/chunk-files.js";
import { decodeKvGeometry } from "../chunks/state-format.js";
import type { ChunkedState, ManifestEntry } from "../manifest/format.js";
import { installCache, readManifest, removeCacheFiles } from "../manifest/store.js";
import type { RemoteCacheId, RemoteTier } from "../remote/types.js";
import { WriteBehind } from "../remote/write-behind.js";
import type { SyncDeleteTarget } from "./pending-remote-deletes.js";
import { RemoteDeletes } from "./remote-deletes.js";
import { manifestHeader } from "./trust.js";

export type { SyncDeleteTarget };
import type { StoreContext } from "./context.js";
import type { RemoteHooks, RemotePrefixQuery } from "./remote-hooks.js";
import { initKey } from "./layers.js";

/** Uploads waiting at most (one per cache; the oldest is dropped past this). */
export const DEFAULT_MAX_PENDING_UPLOADS = 64;

interface UploadJob {
  id: RemoteCacheId;
  reservation: ReturnType<RemoteTier["reserve"]>;
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

export class RemoteSync implements RemoteHooks {
  readonly tier: RemoteTier;
  readonly #ctx: () => StoreContext;
  readonly #uploads: WriteBehind<UploadJob>;
  /** The deletes the tier has not taken yet (see remote-deletes.ts). */
  readonly #deletes: RemoteDeletes;
  /** Whether the "chunked caches stay local" note was logged (once per store). */
  #warnedChunked = false;
  /** Commits a pending delete covers: uploaded once it is taken (see afterCommit). */
  readonly #deferredUploads = new Map<string, string | null>();

  constructor(tier: RemoteTier, ctx: () => StoreContext, options: { maxPendingUploads?: number | undefined } & RemoteSyncInternals = {}) {
    this.tier = tier;
    this.#ctx = ctx;
    this.#deletes = new RemoteDeletes(tier, ctx, () => this.#releaseDeferredUploads(), { deleteRetryFirstMs: options.deleteRetryFirstMs });
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
    if (this.#deletes.covers(loc)) {
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
      if (entry.chunks) {
        // The file is only the tail of a chunked state (docs/chunks-format.md): its token
        // chunks go first, each only if the tier lacks it; the record (format 2) names them,
        // so a reader that does not know chunks refuses it instead of taking the tail for a state.
        const chunks = entry.chunks;
        if (!this.tier.putChunks) {
          if (!this.#warnedChunked) {
            this.#warnedChunked = true;
            this.#logger.info(logLine("this remote tier does not carry token chunks; chunked caches stay local", { cachePath }));
          }
          return;
        }
        const files = this.#ctx().chunkFiles;
        const put = await this.tier.putChunks(chunks.context, chunks.ids, (id) => files.read(chunks.context, id));
        if (!put.ok) {
          this.#logger.debug(logLine("remote upload of token chunks failed; the state is not published", { cachePath, reason: put.reason }));
          return;
        }
      }
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
          tokenChunks: entry.chunks ?? null,
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
    await this.#deletes.refresh();
    if (this.#deletes.covers(loc)) return false;
    return this.tier.has(cacheIdOf(loc, fingerprint)).catch(() => false);
  }

  /**
   * Fetch the remote state of `loc` into `cachePath` and install it as a committed cache.
   * The caller holds the cache's lock and its directory exists, and nothing trusted is at
   * `cachePath`. Resolves to the installed entry, or null on any miss (never rejects).
   */
  async readThrough(cachePath: string, loc: CacheLocation, fingerprint: string | null, accept: { chunked: boolean } = { chunked: false }): Promise<ManifestEntry | null> {
    const ctx = this.#ctx();
    await this.#deletes.refresh();
    if (this.#deletes.covers(loc)) return null;
    const temp = ownTempPath(cachePath);
    try {
      const got = await this.tier.fetchTo(cacheIdOf(loc, fingerprint), temp);
      if (!got.hit) return null;
      const { state } = got;
      const install = () =>
        installCache(ctx.fsBackend, {
          source: temp,
          target: cachePath,
          header: manifestHeader(loc, fingerprint),
          previous: null,
          messageCount: state.messageCount,
          tokenCount: state.tokenCount,
          chain: state.chain,
          noReplace: false,
          chunks: state.tokenChunks ?? null,
        });
      const tokenChunks = state.tokenChunks ?? null;
      if (tokenChunks !== null && !accept.chunked) {
        ctx.logger.debug(logLine("a remote state is chunked and this reader loads whole files only; a miss", { cachePath }));
        return null;
      }
      // A chunked state: the chunks the root lacks come from the tier, verified, before the
      // manifest naming them — under the commit gate, as a local chunked commit.
      const installed = tokenChunks === null ? await install() : await ctx.chunkFiles.withCommitGate(async () => ((await this.#fetchTokenChunks(tokenChunks, cachePath)) ? install() : null));
      if (installed === null) return null;
      const { entry, unsettled } = installed;
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
   * Make every token chunk of `chunks` present under the root: touched when it is there, else
   * fetched from the tier, verified (size, geometry, checksum, identity from parent + tokens +
   * context) and written. Call under the commit gate. False (a miss) when one is missing from
   * the tier, does not verify, or the tier cannot be reached.
   */
  async #fetchTokenChunks(chunks: ChunkedState, cachePath: string): Promise<boolean> {
    const ctx = this.#ctx();
    const files = ctx.chunkFiles;
    if (!this.tier.getChunk) return false;
    const geometry = decodeKvGeometry(Buffer.from(chunks.geometry, "base64"));
    const context = { digest: chunks.context, chunkTokens: chunks.chunkTokens };
    let fetched = 0;
    for (let i = 0; i < chunks.ids.length; i++) {
      const id = chunks.ids[i]!;
      if (await files.touch(chunks.context, id)) continue;
      const got = await this.tier.getChunk(chunks.context, id);
      if (!got.ok || got.bytes === null) {
        ctx.logger.debug(logLine("a token chunk of a remote state is not in the tier; a miss", { cachePath, id, reason: got.ok ? "absent" : got.reason }));
        return false;
      }
      try {
        verifyChunkBytes(got.bytes, context, id, i === 0 ? null : chunks.ids[i - 1]!, geometry, `token chunk ${id} from the remote tier`);
      } catch (error) {
        ctx.logger.warn(logLine("a token chunk from the remote tier is not the chunk its name says; a miss", { cachePath, id, error }));
        return false;
      }
      await files.write(chunks.context, id, got.bytes);
      fetched++;
    }
    ctx.logger.debug(logLine("fetched the token chunks this root lacked", { cachePath, fetched, of: chunks.ids.length }));
    return true;
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
    await this.#deletes.refresh();
    if (this.#deletes.covers(loc)) return false;
    const cachePath = cachePathOf(ctx.root, loc);
    if (query.exclude.has(cachePath) || (await statIdentity(cachePath).catch(() => null))) return false;
    ctx.layers.refDir(cachePath);
    let lease = null;
    let installed = false;
    try {
      await ctx.ensureCacheDir(loc);
      lease = ctx.locks.tryAcquire(cachePath);
      if (!lease || (await statIdentity(cachePath))) return false;
      // (a chunked state is found and joined by the borrow like a local chunked cache)
      installed = (await this.readThrough(cachePath, loc, query.fingerprint, { chunked: true })) !== null;
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
    this.#deletes.start();
  }

  /**
   * After `store.delete`: drop waiting uploads it covers and delete the remote copies (a
   * tombstone refuses uploads ordered before it), retried until the tier takes them — see
   * remote-deletes.ts.
   */
  async afterDelete(target: SyncDeleteTarget): Promise<void> {
    const ctx = this.#ctx();
    if ("all" in target) {
      this.#uploads.cancel(() => true);
      this.#deferredUploads.clear();
    } else {
      const dir = path.join(cacheKeyDir(ctx.root, target.kvCacheKey, target.scopeId), target.modelId ?? "");
      this.#uploads.cancel((cachePath) => isWithin(dir, cachePath));
      for (const cachePath of this.#deferredUploads.keys()) if (isWithin(dir, cachePath)) this.#deferredUploads.delete(cachePath);
    }
    await this.#deletes.add(target);
  }

  /** Queue the uploads deferred behind deletes that are no longer pending. */
  #releaseDeferredUploads(): void {
    const root = this.#ctx().root;
    for (const [cachePath, fingerprint] of this.#deferredUploads) {
      const loc = parseCachePath(root, cachePath);
      if (loc && this.#deletes.covers(loc)) continue;
      this.#deferredUploads.delete(cachePath);
      this.afterCommit(cachePath, fingerprint);
    }
  }

  /** Send the pending deletes once more, finish the uploads queued so far, then close the tier. */
  async close(): Promise<void> {
    // Deletes first: an upload a pending delete covers is sent only after it (or never).
    await this.#deletes.close();
    this.#deferredUploads.clear();
    await this.#uploads.drain();
    await this.tier.close();
  }
}
