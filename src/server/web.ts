/**
 * What `kvkeep serve` gives its web page (web/index.html in the package): the page itself, and
 * the named sessions kvkeep keeps for the caller's key (its scope), read from the root without
 * changing anything. The page keeps its conversations' text in the browser (kvkeep keeps KV
 * caches, never transcripts) and names each one's cache (`kv_cache`), so this list says which of
 * them kvkeep can resume, and how much it holds.
 */
import { promises as fs } from "node:fs";
import path from "node:path";
import { scopeIdOf } from "../keys/scope.js";
import { findPackageRoot } from "../native/paths.js";
import { readScopeCaches } from "../store/inspect.js";

/** The page's file in the package. */
export function webPagePath(): string | null {
  const root = findPackageRoot();
  return root === null ? null : path.join(root, "web", "index.html");
}

let page: Promise<string | null> | null = null;

/** The page's HTML (read once), or null when the package has no web/ directory. */
export function webPage(): Promise<string | null> {
  page ??= (async () => {
    const file = webPagePath();
    if (file === null) return null;
    return fs.readFile(file, "utf8").catch(() => null);
  })();
  return page;
}

export interface SessionInfo {
  /** The session's name (what requests send as `kv_cache`). */
  name: string;
  /** Messages the cached state covers; null without a readable manifest. */
  messages: number | null;
  bytes: number;
  /** Last use, Unix milliseconds. */
  last_used_ms: number;
}

/** At most this many sessions are listed, most recently used first. */
export const MAX_LISTED_SESSIONS = 200;

/**
 * The named sessions of `modelId` in the space of `scope` (undefined: the shared space): only
 * kvkeep's own caches, never another scope's.
 */
export async function listSessions(root: string, modelId: string, scope: string | undefined): Promise<SessionInfo[]> {
  const scopeId = scope === undefined ? null : scopeIdOf(scope);
  const sessions: SessionInfo[] = [];
  for (const record of await readScopeCaches(root, scopeId, modelId, "named")) {
    if (!record.owned || record.problem !== null) continue;
    sessions.push({ name: record.cacheKey, messages: record.messageCount, bytes: record.logicalBytes, last_used_ms: Math.round(record.lastUsedMs) });
  }
  sessions.sort((a, b) => b.last_used_ms - a.last_used_ms);
  // One line per name: a session's caches under several system prompts show as its latest.
  const seen = new Set<string>();
  return sessions.filter((s) => !seen.has(s.name) && seen.add(s.name)).slice(0, MAX_LISTED_SESSIONS);
}
