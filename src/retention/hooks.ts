/** What sessions and the store tell retention of the caches they change (its catalog and sweeps). */
import type { ManifestEntry } from "../manifest/format.js";

/**
 * What sessions and `store.delete` tell retention (src/retention/retention.ts), which keeps
 * the index of the root: each call right after the change it reports (sessions hold the
 * cache's lock then).
 */
export interface RetentionHooks {
  /** A state was installed at `cachePath` (prime or commit) for `fingerprint`: a write, and a use. */
  noteCommitted(cachePath: string, entry: ManifestEntry, fingerprint: string | null): void;
  /** A turn loads the trusted cache at `cachePath`: a use (also recorded on disk; never throws). */
  noteUsed(cachePath: string, entry: ManifestEntry): Promise<void>;
  /** The cache at `cachePath` was removed. */
  noteRemoved(cachePath: string): void;
  /** A commit succeeded: start a background sweep if one is due (never waits for it). */
  afterCommit(): void;
}
