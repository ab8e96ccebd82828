/**
 * Public types of kvkeep. The seed contract's names (`TurnHandle`, `BeginTurnInput`,
 * `CommitResult`, `KvCacheSession`, …) keep their meaning; everything else is additive.
 */
import type { KvKeepError } from "./errors.js";
import type { Logger } from "./logger.js";

/** One chat message as auto mode keys it: role, content and attachment paths. */
export interface CacheMessage {
  role: string;
  content: string;
  attachments?: ReadonlyArray<{ path: string }> | undefined;
}

export interface TurnHandle {
  /**
   * The committed cache file: it exists, trusted, when `beginTurn` resolves. With
   * `layout: "whole"` it is the state and the engine may load it (or use `session.loadState`);
   * with `layout: "chunked"` it holds only the state's last partial chunk (kvkeep's encoding,
   * not a state): never load it — `session.loadState` assembles the state in memory.
   */
  readonly cachePath: string;
  /**
   * How the committed state at `cachePath` is stored: `"whole"` (the file is the state) or
   * `"chunked"` (content-addressed token chunks plus the tail in the file; docs/chunks-format.md).
   */
  readonly layout: "chunked" | "whole";
  /**
   * Snapshot of the saved-message count at `beginTurn` time (0 if the cache was just primed).
   * Consumed by `decideCachedHistorySlice` to pick the message tail for the engine.
   */
  readonly savedCount: number;
  /**
   * Where the engine must write the new state at the end of the turn: a temp file beside
   * `cachePath`. `commitTurn` verifies it, fsyncs it and renames it into place, so a crash
   * mid-save never leaves a torn cache. (Engines that write in place at `cachePath` still
   * work, without that guarantee for the turn.) In a chunked session (`session.layout`
   * `"chunked"`) it is an in-memory file's path (`/proc/self/fd/<n>`, valid until the turn
   * ends): `commitTurn` stores only the chunks the root lacks, the tail and the manifest.
   */
  readonly savePath: string;
  /** The cache key: the custom key, or `auto-<16 hex>` for auto mode. */
  readonly cacheKey: string;
  readonly modelId: string;
  readonly configHash: string;
  readonly kind: "custom" | "auto";
  /** True when this `beginTurn` called `primeIfMissing` (the cache held no history before). */
  readonly primed: boolean;
  /**
   * The conversation this turn belongs to (`input.conversationId`, else the cache key — in a
   * scoped session `<scope id>/<cache key>`, so warmers never mix scopes).
   */
  readonly conversationId: string;
  /**
   * A cache this `beginTurn` found on disk and refused — removed before priming a fresh one
   * (so `primed` is true, unless the remote tier supplied the state) — or null when nothing
   * was refused. In auto mode it may be the cache at the lookup key (the history without its
   * last message); `refused.cachePath` says which file it was.
   */
  readonly refused: CacheRefusal | null;
}

/**
 * Why kvkeep refused a cache file it found where a turn's cache belongs.
 * - `"foreign"`: a well-formed cache made for something else — its manifest names another
 *   model fingerprint (other weights, context size or KV layout), model id, config hash or
 *   cache key. Expected after a model upgrade or a change of context options.
 * - `"corrupt"`: a cache that cannot be trusted as what it claims — no manifest, or one that
 *   is unreadable, not JSON, of another format or describing no state; a file that is empty,
 *   or whose size, identity or checksum matches no committed state (truncated, rewritten,
 *   flipped bits), or that changed while it was verified; a symlink, directory, FIFO or
 *   device where the cache file or its manifest belongs.
 */
export type CacheRefusalReason = "foreign" | "corrupt";

export interface CacheRefusal {
  readonly reason: CacheRefusalReason;
  /** What the check found, in words (for logs and people; the wording is not stable, `reason` is). */
  readonly detail: string;
  /** The refused (and removed) cache file. */
  readonly cachePath: string;
}

interface BeginTurnCommon {
  /** Hash of system prompt + (static) tool names (`generateConfigHash`). */
  configHash: string;
  /**
   * Prime the cache: make the engine write a state holding only the system prompt (and
   * static tools) to the path given — a temp file beside the cache (in a chunked session an
   * in-memory file's path). Called when no trusted
   * cache exists in memory or on disk. kvkeep then verifies and commits that file as the
   * cache with a saved count of 0 before `beginTurn` resolves. An error it throws passes
   * through `beginTurn` unchanged.
   */
  primeIfMissing: (path: string) => Promise<void>;
  /**
   * Aborts the wait for the cache file while another turn holds it: the queued `beginTurn`
   * rejects at once with `ABORTED` and gives its place up. Not consulted after the turn began.
   */
  signal?: AbortSignal | undefined;
  /**
   * Names the conversation in turn events (warming). Default: the custom key; in auto mode
   * `conv-<hash>` of the history up to its first user message (stable across the turns of
   * one conversation, shared by conversations that open identically); in a scoped session
   * either after `<scope id>/`.
   */
  conversationId?: string | undefined;
}

export interface BeginCustomTurnInput extends BeginTurnCommon {
  kind: "custom";
  /** User-provided session key (`completion({ kvCache: "session-a" })`): one safe path component. */
  customKey: string;
}

export interface BeginAutoTurnInput extends BeginTurnCommon {
  kind: "auto";
  /** Conversation history; the lookup key is that of the history without its last message. */
  history: readonly CacheMessage[];
}

export type BeginTurnInput = BeginCustomTurnInput | BeginAutoTurnInput;

export interface StaticCommitResult {
  kind: "static";
  /** `history.length + 1` — the number of messages the new state covers. */
  messageCount: number;
  /** Tokens in the new state, when the engine reports it (kept in the manifest). */
  tokenCount?: number | undefined;
  /**
   * The messages the new state covers (`[...history, reply]`, `messageCount` of them). When
   * given, the state is indexed for prefix reuse: other conversations that share its opening
   * can start from it (`store.findPrefix`). Auto-mode commits are indexed without it.
   */
  history?: readonly CacheMessage[] | undefined;
}

export interface AutoRenameCommitResult {
  kind: "autoRename";
  /** `session.autoCachePath(configHash, [...history, reply])`: where the new state is kept. */
  targetCachePath: string;
  /** Number of messages the new state represents (`history.length + 1`). */
  messageCount: number;
  /** Tokens in the new state, when the engine reports it (kept in the manifest). */
  tokenCount?: number | undefined;
}

export type CommitResult = StaticCommitResult | AutoRenameCommitResult;

/** Why `commitTurn` committed nothing although the turn was open (the turn was rolled back). */
export type CommitFailureReason =
  /** The engine saved nothing at `savePath` (nor rewrote `cachePath`). */
  | "save-missing"
  /** The engine saved an empty state. */
  | "save-empty"
  /** A delete (in this or another process) covered the cache while the turn was open. */
  | "deleted-during-turn"
  /** The disk filled up while the new state was installed. */
  | "no-space"
  /** Another I/O failure while the new state was installed. */
  | "io-error"
  /** A symlink or non-directory was found where kvkeep keeps the cache. */
  | "unsafe-path";

/**
 * What `commitTurn` did. It resolves for every outcome that left the store consistent —
 * including the failures above, which are also logged as a warning — and rejects only for
 * programmer errors (a bad `result`). The seed contract's `Promise<void>` callers may
 * ignore it.
 */
export type CommitOutcome =
  | {
      committed: true;
      /** Where the committed state is (the target for auto mode). */
      cachePath: string;
      messageCount: number;
      /** An existing cache for the same history was kept and this turn's state dropped. */
      keptExisting: boolean;
      /**
       * The identity (size, inode, mtime ns) of the file this commit installed, taken under
       * the cache's lock — an engine can tell whether it still holds exactly that state.
       * Null when an existing cache was kept.
       */
      file: { size: number; ino: string; mtimeNs: string } | null;
    }
  /** The handle is not an open turn of this session (another session's, or already ended): nothing was done. */
  | { committed: false; reason: "not-open" }
  | {
      committed: false;
      reason: CommitFailureReason;
      /** The failure, as a `KvKeepError` whose code names it (`SAVE_MISSING`, `NO_SPACE`, …). */
      error: KvKeepError;
      /**
       * True when the last committed state is still the cache (`onRollback: "keep-committed"`,
       * and every failure in kvkeep's own I/O whatever the policy); false when the rollback
       * cleared it, or a delete removed it.
       */
      keptCommitted: boolean;
    };

export interface KvCacheSession {
  readonly modelId: string;
  /** Open a turn: lock the cache file, verify or prime it, and return its handle. */
  beginTurn(input: BeginTurnInput): Promise<TurnHandle>;
  /**
   * Commit a successful turn: durably install the state the engine saved at `savePath`
   * (or in place at `cachePath`) and record its message count. A handle from another
   * session, or one already committed or rolled back, is a no-op (`reason: "not-open"`).
   * If no new state was saved, the cache was deleted meanwhile, or the install fails, the
   * turn is rolled back, a warning is logged and the promise resolves with
   * `{ committed: false, reason, error }`: a failed install keeps the last committed state
   * (or, when it failed after the new state took its place, commits the new one).
   * It rejects only for a bad `result` (`INVALID_ARGUMENT`), leaving the turn open.
   */
  commitTurn(turn: TurnHandle, result: CommitResult): Promise<CommitOutcome>;
  /**
   * Roll back an open turn. With `onRollback: "clear"` (the seed's `createKvCacheSession`),
   * removes the file on disk, the saved count and the init flag at once (also when the file
   * is already gone) and prunes empty key directories; with `"keep-committed"` (the default
   * of `openKvCacheStore` sessions) the last committed state stays. Idempotent; a no-op
   * after commit.
   */
  rollback(turn: TurnHandle): Promise<void>;
  /** Forget the saved count of the turn's cache (file and init flag stay). */
  dropStaleSavedCount(turn: TurnHandle): void;
  /** Where auto mode keeps the cache of `history` (pass `[...history, reply]` for a commit target). */
  autoCachePath(configHash: string, history: readonly CacheMessage[]): string;
  /** Where a custom key's cache lives. */
  customCachePath(customKey: string, configHash: string): string;
  /**
   * How this session stores states it commits: `"chunked"` when it was created with
   * `chunks` and the store can hand states over in memory (Linux memfd through the native
   * addon), else `"whole"`. A chunked session still reads whole-file caches (existing roots),
   * and writes a state it cannot split (an unknown format) whole.
   */
  readonly layout: "chunked" | "whole";
  /**
   * Hand the turn's committed state to `use` as a path the engine can load, and resolve what
   * `use` returned. A whole-file cache: `use(turn.cachePath)`. A chunked cache: its chunks
   * and tail joined into an in-memory file, closed when `use` settles — with `tokens` (the
   * prompt's), only the leading tokens the state shares with them (at least one), so chunks
   * the prompt does not share are never read. `tokens` passed to `use` is how many tokens the
   * state given holds (null when unknown: a whole file). A chunk that is missing or damaged
   * rejects with CHUNK_MISSING / CHUNK_CORRUPT, and the cache is removed (the commit writes
   * it anew); only an open turn of this session can be loaded (`INVALID_ARGUMENT` otherwise).
   */
  loadState<T>(turn: TurnHandle, use: (loadPath: string, tokens: number | null) => Promise<T>, options?: { tokens?: ArrayLike<number> | undefined }): Promise<T>;
}

/**
 * Opting a session into chunked storage (`SessionOptions.chunks`): what the engine's KV
 * bytes depend on besides the model fingerprint and the state's own layout (which kvkeep
 * reads from the state). Chunks are shared between conversations of one scope whose states
 * agree on all of it.
 */
export interface ChunkingOptions {
  /**
   * The attention-rotation setting the engine's KV cache was made with (llama.cpp rotates
   * quantized K/V unless LLAMA_ATTN_ROT_DISABLE is set; `attentionRotationSetting(process.env)`).
   */
  attentionRotation: string;
  /** The engine context's sequence count (llama.cpp's n_stream). */
  sequences: number;
  /**
   * Tokens per chunk (default 64: a tail and a shared partial chunk are at most 63 tokens, which
   * each commit rewrites and each chat beside a shared prompt keeps its own copy of).
   */
  chunkTokens?: number | undefined;
  /** Anything else the KV depends on (engine build, RoPE overrides, ...). Order matters. */
  extra?: readonly string[] | undefined;
  /**
   * Keep whole files when the store has a remote tier (a fleet that mixes in kvkeep versions
   * that read only whole files). Default false: chunked, and the tier moves chunks.
   */
  wholeWithRemote?: boolean | undefined;
}

export interface SessionOptions {
  /** Logger for this session's turns. Default: the store's logger. */
  logger?: Logger | undefined;
  /**
   * Whose conversations these are — a user, a tenant, an API key: any non-empty string (at
   * most 1024 characters, well-formed UTF-16), opaque to kvkeep. Caches of one scope are
   * never seen from another: the same key in two scopes is two caches, and prefix reuse
   * (`findPrefix`, `borrowPrefix`, the adapters) never crosses scopes — in this process,
   * across processes on the root, or through the remote tier. The scope is never written
   * anywhere: paths, logs, manifests and remote keys carry a SHA-256 of it (its id).
   * Default: none — the one shared space (kvkeep before scopes, and its on-disk layout).
   */
  scope?: string | undefined;
  /**
   * Identifies the exact model and state layout (weights, context settings). A cache whose
   * manifest carries another fingerprint is never handed to the engine: it is removed and
   * re-primed. Default: none (only caches written without a fingerprint match).
   */
  fingerprint?: string | undefined;
  /**
   * What `rollback` does for this session's turns. `"keep-committed"`: a cancelled or failed
   * turn keeps the last committed state (kvkeep's commits are atomic, so it is intact);
   * `"clear"`: the seed's three-layer clear — file, saved count and init flag. Default: the
   * store's `onRollback` (`"keep-committed"`); `createKvCacheSession` defaults to `"clear"`.
   */
  onRollback?: "clear" | "keep-committed" | undefined;
  /**
   * Store this session's states as content-addressed token chunks (docs/chunks-format.md):
   * a commit writes only the chunks the root lacks, the tail and the manifest, and states are
   * handed to and from the engine in memory. Only for engines whose state kvkeep can split
   * (llama.cpp sequence states of attention models: never sliding-window, recurrent or hybrid
   * models). Honoured where the store has in-memory files (Linux, native addon); elsewhere the
   * session stays whole-file (`session.layout` says which). Default: none (whole files).
   */
  chunks?: ChunkingOptions | undefined;
}

/**
 * What `store.delete` removes: a key's caches (every model, or one) in one scope — named by
 * the scope (`scope`) or by its id (`scopeId`, as `kvkeep scan` and eviction events show it);
 * the shared space without either — or everything with `{ all: true }`, every scope's too.
 */
export type DeleteTarget =
  | { kvCacheKey: string; modelId?: string | undefined; scope?: string | undefined; scopeId?: string | undefined }
  | { all: true };

/** Emitted around every turn, for warming and UIs. */
export interface TurnEvent {
  type: "turnStarted" | "turnSettled";
  conversationId: string;
  /** The id of the session's scope (a hash, never the scope), or null for the shared space. */
  scopeId: string | null;
  kind: "custom" | "auto";
  cacheKey: string;
  modelId: string;
  configHash: string;
  /**
   * `turnStarted`: the cache the turn loads. `turnSettled`: the cache the next turn of this
   * conversation will load — the committed path (the target for auto mode), or the turn's
   * own path after a rollback.
   */
  cachePath: string;
  /** Only on `turnSettled`. */
  outcome?: "committed" | "rolledBack";
  /** Only on a committed `turnSettled`: messages and tokens (if reported) the cache covers. */
  messageCount?: number;
  tokenCount?: number | null;
}

/** Overrides for one `store.sweep()`; the store's options apply to what is left out. */
export interface SweepOptions {
  /** Budget for the evictable caches, in bytes (see `KvCacheStoreOptions.maxBytes`). */
  maxBytes?: number | undefined;
  /** Evict evictable caches not used for this long, in ms (see `KvCacheStoreOptions.maxIdleMs`). */
  maxIdleMs?: number | undefined;
}

/** One cache a sweep removed, and why. */
export interface EvictedCache {
  /** The id of the cache's scope (a hash: the scope itself is never stored), or null for the shared space. */
  scopeId: string | null;
  cacheKey: string;
  modelId: string;
  configHash: string;
  bytes: number;
  /** `idle`: not used for `maxIdleMs`; `budget`: least recently used while over `maxBytes`. */
  reason: "idle" | "budget";
}

export interface SweepResult {
  /** Idle ones first, then budget ones, each oldest use first. */
  evicted: EvictedCache[];
  /**
   * Bytes of the evictable caches left after the sweep (auto caches, plus named ones with
   * `evictNamed`), physical: their files and the token chunks only they name, each once.
   * Above `maxBytes` only when caches in use had to be kept.
   */
  keptBytes: number;
  /**
   * Every file the sweep removed: each evicted cache's file, manifest and lock file, and the
   * chunk files (and dead writers' chunk temps) its chunk GC removed.
   */
  removedFiles: number;
  /** Chunk files no manifest referenced any more (docs/chunks-format.md), removed by the sweep's chunk GC. */
  removedChunks: number;
  /** Their bytes. */
  removedChunkBytes: number;
}

/** What is on disk under the root: every cache, auto and named. */
export interface StoreUsage {
  /**
   * Everything kvkeep has on disk under the root (physical bytes): the cache files, each
   * token chunk once however many caches share it (`chunkBytes`), plus `staleTempBytes`.
   */
  bytes: number;
  /** Caches (auto and named). */
  count: number;
  /** Cache files of auto / named caches: whole states, or a chunked cache's tail (its chunks are in `chunkBytes`). */
  autoBytes: number;
  namedBytes: number;
  /** What the caches would take if each held its own copy of every chunk it names (whole-file caches count as they are). */
  logicalBytes: number;
  /** `logicalBytes` / the caches' physical bytes (1 when nothing is shared, or nothing is stored). */
  sharing: number;
  /** Distinct token chunks the caches name (docs/chunks-format.md), and their bytes. */
  chunkCount: number;
  chunkBytes: number;
  /**
   * Temp files left by writers that died (a crash mid-save) that the last walk of the root
   * (at open, or a sweep's periodic resync) found and could not remove yet.
   */
  staleTempBytes: number;
}

/** A committed cache as `store.useCache` hands it out. */
export interface CacheInfo {
  cachePath: string;
  /** Messages of the conversation the state covers. */
  messageCount: number;
  /** Tokens in the state, when the engine reported them at commit. */
  tokenCount: number | null;
  /** Size of the state file in bytes (for a chunked cache, of its tail file). */
  bytes: number;
  /** How the cache is stored: `"chunked"` caches must be loaded from `loadPath`, never `cachePath`. */
  layout: "chunked" | "whole";
  /**
   * Where the engine loads the state from while `use` runs: `cachePath` for a whole file; for
   * a chunked cache an in-memory file holding the state joined from its chunks (closed after `use`).
   */
  loadPath: string;
}

/** A question to the prefix index: which cache of this model and config shares the most of `history`? */
export interface PrefixQuery {
  /**
   * The scope whose caches may be returned (`SessionOptions.scope`); without it, only the
   * shared space's. A cache of another scope is never returned, lent or reported.
   */
  scope?: string | undefined;
  modelId: string;
  /** The model fingerprint the caches must have been written for (as in `SessionOptions`). Default: none. */
  fingerprint?: string | null | undefined;
  configHash: string;
  /** The conversation to resume (the whole prompt's messages). */
  history: readonly CacheMessage[];
  /** Cache paths never to return, e.g. the turn's own `cachePath`. */
  exclude?: readonly string[] | undefined;
  /**
   * The prompt's tokens, when the engine has them. A chunked source is then read only as far
   * as it shares them: its shared full chunks and the shared part of the next chunk (or of its
   * tail), joined in memory — never the rest of a longer conversation. Without them the whole
   * source is lent.
   */
  tokens?: ArrayLike<number> | undefined;
  /** Only caches sharing at least this many leading messages. Default 1. */
  minCommonMessages?: number | undefined;
  /**
   * Only exact ancestors: caches whose whole conversation is a prefix of `history`, for
   * engines that cannot cut a longer state back (recurrent, hybrid, sliding-window models).
   * Default false: a longer cache counts, and the engine cuts it at the first differing token.
   */
  exactAncestor?: boolean | undefined;
}

/** A cache sharing a prefix with a history, as the prefix index knows it. */
export interface PrefixMatch {
  cachePath: string;
  cacheKey: string;
  kind: "named" | "auto";
  /** Leading messages its conversation shares with the history. */
  commonMessages: number;
  /** Messages its state covers (more than `commonMessages` when it continues differently). */
  messageCount: number;
  /** Tokens in its state, when its engine reported them. */
  tokenCount: number | null;
  /** Size of its state file. */
  bytes: number;
}

/** A source lent by `store.borrowPrefix`: verified, held, and read-only for the duration of `use`. */
export interface BorrowedCache extends PrefixMatch {
  /**
   * Where the engine loads the state from while `use` runs: the very file that was verified
   * (on Linux `/proc/self/fd/<n>` of a descriptor kvkeep holds open, so a delete or a commit
   * replacing it meanwhile cannot change what is loaded), else `cachePath`. For a chunked
   * source, an in-memory file holding the state joined from its chunks (closed after `use`).
   */
  loadPath: string;
  /** How the source is stored (a chunked source is lent joined, see `loadPath`). */
  layout: "chunked" | "whole";
  /**
   * Tokens in the state at `loadPath`: for a chunked source read with `query.tokens`, only
   * the leading tokens it shares with them; null when unknown (a whole file: its own count).
   */
  loadedTokens: number | null;
}
