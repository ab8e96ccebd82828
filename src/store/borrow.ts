/**
 * Prefix reuse at the store: find the cache sharing the longest message prefix with a
 * history (`findPrefix`, from the prefix index), and lend it read-only to an engine
 * (`borrowPrefix`).
 *
 * Borrowing never changes the source: not its file, not its manifest (verified read-only:
 * a pending slot is not promoted, nothing is re-anchored, an untrusted file is skipped, not
 * removed), not its saved count, not its place in retention (no use is recorded). It is
 * held — its lock taken without waiting, so no turn, sweep or preload of any process touches
 * it — only while the engine loads it. The engine loads through a descriptor kvkeep opened on
 * the verified file (`/proc/self/fd/<n>` on Linux), so even a delete, which does not wait
 * for locks, cannot change what is loaded: it loads the verified state whole, or nothing.
 */
import { constants as fsConstants, existsSync, promises as fs } from "node:fs";
import type { FileHandle } from "node:fs/promises";
import { errnoCode, KvKeepError } from "../errors.js";
import { assertRealDirs, statIdentity } from "../durable/files.js";
import type { PrefixCandidate } from "../prefix/prefix-index.js";
import { assertHistory, type KeyChain, messageKeyChain } from "../keys/auto-key.js";
import { assertConfigHash, assertModelId } from "../keys/safe-key.js";
import { scopeIdOption } from "../keys/scope.js";
import { cacheDirComponents, parseCachePath } from "../layout/paths.js";
import { logLine } from "../logger.js";
import { sameIdentity } from "../durable/identity.js";
import { type ManifestEntry, MAX_CHAIN_KEYS } from "../manifest/format.js";
import { verifyCache } from "../manifest/store.js";
import type { Lease } from "../locks/path-locks.js";
import type { RootCatalog } from "../catalog/catalog.js";
import { manifestHeader } from "./trust.js";
import type { BorrowedCache, PrefixMatch, PrefixQuery } from "../types.js";
import { type ChunkedSource, chunkedSource, MAX_TAIL_BYTES, withJoinedState } from "./chunked-load.js";
import type { StoreContext } from "./context.js";
import type { RemotePrefixQuery } from "./remote-hooks.js";

/** Candidates tried per borrow (held, vanished or stale ones are skipped for the next). */
const BORROW_CANDIDATES = 4;

interface CheckedQuery {
  query: PrefixQuery;
  /** The query's scope id (null: the shared space): the only scope whose caches it may see. */
  scopeId: string | null;
  fingerprint: string | null;
  chain: KeyChain;
  exclude: ReadonlySet<string>;
}

function checkQuery(query: PrefixQuery): CheckedQuery {
  if (!query || typeof query !== "object") {
    throw new KvKeepError("INVALID_ARGUMENT", "a prefix query needs { modelId, configHash, history, fingerprint? }.", {
      argument: "query",
    });
  }
  assertModelId(query.modelId);
  assertConfigHash(query.configHash);
  assertHistory(query.history);
  if (query.fingerprint !== undefined && query.fingerprint !== null && typeof query.fingerprint !== "string") {
    throw new KvKeepError("INVALID_ARGUMENT", "fingerprint must be a string or null.", { argument: "fingerprint" });
  }
  if (query.exclude !== undefined && !(Array.isArray(query.exclude) && query.exclude.every((p) => typeof p === "string"))) {
    throw new KvKeepError("INVALID_ARGUMENT", "exclude must be an array of cache paths.", { argument: "exclude" });
  }
  const min = query.minCommonMessages;
  if (min !== undefined && (!Number.isSafeInteger(min) || min < 1)) {
    throw new KvKeepError("INVALID_ARGUMENT", "minCommonMessages must be a positive integer.", { argument: "minCommonMessages" });
  }
  if (query.tokens !== undefined && !isTokenList(query.tokens)) {
    throw new KvKeepError("INVALID_ARGUMENT", "tokens must be an array of 32-bit integer token ids.", { argument: "tokens" });
  }
  if (query.exactAncestor !== undefined && typeof query.exactAncestor !== "boolean") {
    throw new KvKeepError("INVALID_ARGUMENT", "exactAncestor must be a boolean.", { argument: "exactAncestor" });
  }
  return {
    query,
    scopeId: scopeIdOption(query.scope),
    fingerprint: query.fingerprint ?? null,
    chain: messageKeyChain(query.history),
    exclude: new Set(query.exclude ?? []),
  };
}

function isTokenList(tokens: ArrayLike<number>): boolean {
  if (tokens === null || typeof tokens !== "object" || !Number.isSafeInteger(tokens.length)) return false;
  for (let i = 0; i < tokens.length; i++) {
    const t = tokens[i];
    if (!Number.isInteger(t) || t! < -0x80000000 || t! > 0x7fffffff) return false;
  }
  return true;
}

async function candidatesFor(ctx: StoreContext, catalog: RootCatalog, q: CheckedQuery, limit: number): Promise<PrefixCandidate[]> {
  const local = await localCandidates(catalog, q, limit);
  // Remote hook: the fleet may hold a longer prefix than this machine; one pulled here is
  // installed under the root and found by the local index like any other cache.
  if (ctx.remote && (await ctx.remote.pullPrefix(remotePrefixQuery(q), local[0]?.commonMessages ?? 0))) {
    return localCandidates(catalog, q, limit);
  }
  return local;
}

function remotePrefixQuery(q: CheckedQuery): RemotePrefixQuery {
  return {
    scopeId: q.scopeId,
    modelId: q.query.modelId,
    fingerprint: q.fingerprint,
    configHash: q.query.configHash,
    historyKeys: q.chain.keys().slice(1, MAX_CHAIN_KEYS + 1),
    minCommonMessages: q.query.minCommonMessages ?? 1,
    exactAncestor: q.query.exactAncestor ?? false,
    exclude: q.exclude,
  };
}

async function localCandidates(catalog: RootCatalog, q: CheckedQuery, limit: number): Promise<PrefixCandidate[]> {
  const found = await catalog.lookupPrefix(
    { scopeId: q.scopeId, modelId: q.query.modelId, fingerprint: q.fingerprint, configHash: q.query.configHash },
    q.chain,
    { exclude: q.exclude, minCommonMessages: q.query.minCommonMessages, exactAncestor: q.query.exactAncestor, limit },
  );
  // The index keeps scopes apart; the path, which says whose a cache is, must agree.
  return found.filter((c) => (c.facts.scopeId ?? null) === q.scopeId);
}

function matchOf(c: PrefixCandidate): PrefixMatch {
  return {
    cachePath: c.cachePath,
    cacheKey: c.facts.cacheKey,
    kind: c.facts.kind,
    commonMessages: c.commonMessages,
    messageCount: c.facts.messageCount,
    tokenCount: c.facts.tokenCount,
    bytes: c.facts.bytes,
  };
}

/** The cache sharing the longest message prefix with the history (smallest file on ties), or null. */
export async function findPrefix(ctx: StoreContext, catalog: RootCatalog, query: PrefixQuery): Promise<PrefixMatch | null> {
  ctx.assertOpen();
  const q = checkQuery(query);
  const [best] = await candidatesFor(ctx, catalog, q, 1);
  return best ? matchOf(best) : null;
}

/** Where an engine can load the file `handle` holds: its /proc descriptor path where there is one. */
const PROC_FD = process.platform === "linux" && existsSync("/proc/self/fd");
function loadPathOf(handle: FileHandle, cachePath: string): string {
  return PROC_FD ? `/proc/self/fd/${handle.fd}` : cachePath;
}

/**
 * Lend the best source for `query` to `use` and return its result; null when no cache
 * qualifies or every candidate is held, gone or no longer what the index said. An error
 * thrown by `use` passes through (after the source is released).
 */
export async function borrowPrefix<T>(
  ctx: StoreContext,
  catalog: RootCatalog,
  query: PrefixQuery,
  use: (source: BorrowedCache) => Promise<T>,
): Promise<{ value: T } | null> {
  ctx.assertOpen();
  if (typeof use !== "function") {
    throw new KvKeepError("INVALID_ARGUMENT", "borrowPrefix needs a function (source) => Promise.", { argument: "use" });
  }
  const q = checkQuery(query);
  for (const candidate of await candidatesFor(ctx, catalog, q, BORROW_CANDIDATES)) {
    const lent = await lendOne(ctx, catalog, q, candidate, use);
    if (lent) return lent;
  }
  return null;
}

/**
 * Hold, verify (read-only) and lend one candidate; null when it cannot be lent as it is.
 * Only `use` may throw through: a candidate kvkeep cannot check — a lock file that cannot
 * be opened (a planted symlink, another user's directory), an I/O error — is skipped like a
 * held one, so the next candidate is tried.
 */
async function lendOne<T>(
  ctx: StoreContext,
  catalog: RootCatalog,
  q: CheckedQuery,
  candidate: PrefixCandidate,
  use: (source: BorrowedCache) => Promise<T>,
): Promise<{ value: T } | null> {
  const { cachePath, commonMessages } = candidate;
  const loc = parseCachePath(ctx.root, cachePath);
  if (!loc || loc.scopeId !== q.scopeId) return null; // never another scope's cache
  const skip = (reason: string): null => {
    ctx.logger.debug(logLine("prefix source skipped", { cachePath, reason }));
    return null;
  };
  // Without this, a state removed outside kvkeep stays a candidate (one stat per turn) until the next resync.
  const seenLastUsedMs = catalog.index.get(cachePath)?.lastUsedMs;
  const vanished = (): null => {
    catalog.forgetVanished(cachePath, seenLastUsedMs);
    return skip("file gone");
  };
  let lease: Lease | null = null;
  let handle: FileHandle | null = null;
  let gone = false;
  const release = async (): Promise<void> => {
    await handle?.close().catch(() => {});
    if (!lease) return;
    // A delete that ran meanwhile left the lock file (it was held): take it away with the lock.
    if (!gone) gone = !(await statIdentity(cachePath).catch(() => null));
    await ctx.releaseCache(lease, cachePath, gone).catch(() => {});
  };

  const holdAndCheck = async (): Promise<BorrowedCache | null> => {
    // Never through a symlink, never creating directories for a cache that is gone.
    const dirs = await assertRealDirs(ctx.root, cacheDirComponents(loc)).catch((error: unknown) => error as Error);
    if (dirs instanceof Error) return skip(`its directory cannot be used: ${dirs.message}`);
    if (!dirs) return vanished();
    if (!(await statIdentity(cachePath))) return vanished();
    lease = ctx.locks.tryAcquire(cachePath);
    if (!lease) return skip("held by a turn or another process");
    ctx.layers.refDir(cachePath);
    const identity = await statIdentity(cachePath);
    if (!identity) {
      gone = true;
      return skip("file gone");
    }
    let entry: ManifestEntry;
    const known = ctx.layers.trusted.get(cachePath);
    if (known && known.fingerprint === q.fingerprint && sameIdentity(known, identity)) {
      entry = known;
    } else {
      const verdict = await verifyCache(ctx.fsBackend, cachePath, manifestHeader(loc, q.fingerprint), {
        checksum: ctx.verify === "checksum",
        readOnly: true,
      });
      if (!verdict.ok) return skip(verdict.missing ? "file gone" : verdict.reason);
      entry = verdict.entry;
    }
    // The index is a hint: the manifest must still say the state holds those messages.
    const chain = entry.chain ?? [];
    if (chain.length < commonMessages || chain[commonMessages - 1] !== q.chain.key(commonMessages)) {
      return skip("its conversation no longer matches the index");
    }
    if (q.query.exactAncestor && entry.messageCount !== commonMessages) return skip("not an exact ancestor");
    try {
      handle = await fs.open(cachePath, fsConstants.O_RDONLY | fsConstants.O_NOFOLLOW | fsConstants.O_NONBLOCK);
    } catch (error) {
      // A delete does not wait for holders: the file may go between the check and the open.
      gone = errnoCode(error) === "ENOENT";
      return skip(`could not be opened: ${errnoCode(error) ?? String(error)}`);
    }
    const st = await handle.stat({ bigint: true });
    const opened = { size: Number(st.size), ino: st.ino.toString(), mtimeNs: st.mtimeNs.toString() };
    if (!st.isFile() || !sameIdentity(opened, identity)) return skip("changed while being verified");
    // A chunked source: its tail is read through the descriptor checked above (a delete or a
    // commit meanwhile cannot change it); its chunks are immutable and verified as they are read.
    if (entry.chunks) {
      if (Number(st.size) > MAX_TAIL_BYTES) return skip("its tail is larger than any chunk");
      chunked = chunkedSource(cachePath, entry.chunks, await handle.readFile());
    }
    return {
      cachePath,
      cacheKey: loc.cacheKey,
      kind: candidate.facts.kind,
      commonMessages,
      messageCount: entry.messageCount,
      tokenCount: entry.tokenCount,
      bytes: entry.size,
      loadPath: loadPathOf(handle, cachePath),
      layout: entry.chunks ? "chunked" : "whole",
      loadedTokens: null,
    };
  };

  let source: BorrowedCache | null = null;
  let chunked: ChunkedSource | null = null;
  try {
    source = await holdAndCheck();
  } catch (error) {
    skip(`could not be checked: ${(error as Error)?.message ?? String(error)}`);
  } finally {
    if (!source) await release();
  }
  if (!source) return null;
  try {
    if (!chunked) return { value: await use(source) };
    // Joined in memory, only as far as the prompt's tokens share it (when given).
    const lent = source;
    let used = false;
    try {
      return {
        value: await withJoinedState(ctx, chunked, q.query.tokens, (loadPath, tokens) => {
          used = true;
          return use({ ...lent, loadPath, loadedTokens: tokens });
        }),
      };
    } catch (error) {
      // A chunk missing or damaged makes this source unusable (it is left as it is: a borrow
      // never changes its source); an error of `use` passes through.
      if (used) throw error;
      return skip(`its chunks could not be joined: ${(error as Error)?.message ?? String(error)}`);
    }
  } finally {
    await release();
  }
}
