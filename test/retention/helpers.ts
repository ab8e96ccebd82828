/** Shared pieces of the retention tests: stores on temp roots, auto and named caches of exact sizes. */
import { promises as fs } from "node:fs";
import { generateConfigHash, type KvCacheSession, type TurnHandle } from "../../src/index.js";
import type { Logger } from "../../src/logger.js";
import { manifestPathOf } from "../../src/layout/paths.js";
import { type InternalStoreOptions, KvCacheStoreImpl, type KvCacheStoreOptions } from "../../src/facade/kvkeep-store.js";
import { writeState } from "../helpers/fake-engine.js";

export const MODEL = "retention-model";
export const configHash = generateConfigHash("retention");

export const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

/** A logger that keeps every line, by level. */
export function recordingLogger(): Logger & { lines: Array<{ level: string; line: string }> } {
  const lines: Array<{ level: string; line: string }> = [];
  const at = (level: string) => (line: string) => void lines.push({ level, line });
  return { lines, debug: at("debug"), info: at("info"), warn: at("warn"), error: at("error") };
}

/** A store that keeps committed caches on rollback (so a test can load a cache without losing it). */
export function openStore(root: string, options: KvCacheStoreOptions & InternalStoreOptions = {}): KvCacheStoreImpl {
  return new KvCacheStoreImpl({ root, onRollback: "keep-committed", ...options });
}

const userOf = (tag: string) => ({ role: "user", content: `question ${tag}` });
const replyOf = (tag: string) => ({ role: "assistant", content: `answer ${tag}` });

/** A first auto turn for conversation `tag`, committed: leaves one auto cache of exactly `size` bytes. Returns its path. */
export async function commitAuto(session: KvCacheSession, tag: string, size = 1000): Promise<string> {
  const history = [userOf(tag)];
  const turn = await session.beginTurn({ kind: "auto", configHash, history, primeIfMissing: (p) => writeState(p, 16).then(() => {}) });
  await writeState(turn.savePath, size);
  const targetCachePath = session.autoCachePath(configHash, [...history, replyOf(tag)]);
  await session.commitTurn(turn, { kind: "autoRename", targetCachePath, messageCount: 2 });
  return targetCachePath;
}

/** The second turn of conversation `tag`: loads the cache `commitAuto` left, and keeps the turn open. */
export async function openAutoLoad(session: KvCacheSession, tag: string): Promise<TurnHandle> {
  const history = [userOf(tag), replyOf(tag), { role: "user", content: "and then?" }];
  const turn = await session.beginTurn({ kind: "auto", configHash, history, primeIfMissing: async () => {
    throw new Error(`the cache of ${tag} should have been loaded, not primed`);
  } });
  return turn;
}

/** Load conversation `tag`'s cache in a turn and end the turn without changing it (a use). */
export async function useAuto(session: KvCacheSession, tag: string): Promise<void> {
  await session.rollback(await openAutoLoad(session, tag));
}

/** A named cache `key` of exactly `size` bytes (prime, then one committed turn). Returns its path. */
export async function commitNamed(session: KvCacheSession, key: string, size = 1000): Promise<string> {
  const turn = await session.beginTurn({ kind: "custom", customKey: key, configHash, primeIfMissing: (p) => writeState(p, 16).then(() => {}) });
  await writeState(turn.savePath, size);
  await session.commitTurn(turn, { kind: "static", messageCount: 1 });
  return turn.cachePath;
}

/** Pretend the cache was last used `ageMs` ago (its manifest's mtime is its last use on disk). */
export async function backdate(cachePath: string, ageMs: number): Promise<void> {
  const t = (Date.now() - ageMs) / 1000;
  await fs.utimes(manifestPathOf(cachePath), t, t);
}

export async function exists(filePath: string): Promise<boolean> {
  return fs.stat(filePath).then(
    () => true,
    () => false,
  );
}

/** A promise with its resolver, to pause a sweep in `beforeEvict`. */
export function gate(): { promise: Promise<void>; open: () => void } {
  let open!: () => void;
  const promise = new Promise<void>((resolve) => (open = resolve));
  return { promise, open };
}
