/**
 * What the store and its sessions ask of the remote tier, at four hook points (see
 * src/store/remote-sync.ts, the one implementation). The context holds this interface, not
 * the implementation, so the store's context does not depend on how the tier is synced.
 */
import type { CacheLocation } from "../layout/paths.js";
import type { ManifestEntry } from "../manifest/format.js";
import type { SyncDeleteTarget } from "./pending-remote-deletes.js";

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

export interface RemoteHooks {
  /** A commit installed a new state at `cachePath`: queue its upload (never waits). */
  afterCommit(cachePath: string, fingerprint: string | null): void;
  /** Whether the tier has the state of `loc` (a cheap look before taking a lock for it). */
  has(loc: CacheLocation, fingerprint: string | null): Promise<boolean>;
  /**
   * Fetch the remote state of `loc` into `cachePath` and install it as a committed cache
   * (the caller holds the cache's lock). The installed entry, or null on any miss (never rejects).
   * A chunked remote state is installed only when `accept.chunked` (the reader joins chunks);
   * otherwise it is a miss — its file would be only a tail.
   */
  readThrough(cachePath: string, loc: CacheLocation, fingerprint: string | null, accept?: { chunked: boolean }): Promise<ManifestEntry | null>;
  /** Install a remote state sharing more leading messages than `localBest` at its own place; true when one was. */
  pullPrefix(query: RemotePrefixQuery, localBest: number): Promise<boolean>;
  /** After `store.delete`: drop queued uploads it covers and delete the remote copies (retried until taken). */
  afterDelete(target: SyncDeleteTarget): Promise<void>;
  /** Called by the store once its context exists: send the deletes pending on the root. */
  start(): void;
  /** Send the pending deletes once more, finish the queued uploads, then close the tier. */
  close(): Promise<void>;
}
