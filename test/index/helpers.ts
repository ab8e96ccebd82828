/** Conversations committed through real sessions on real roots, for the prefix-reuse tests (fake engine bytes). */
import { createHash, randomBytes } from "node:crypto";
import { promises as fs } from "node:fs";
import { type CacheMessage, generateConfigHash, type KvCacheSession } from "../../src/index.js";

export const MODEL = "prefix-model";
export const SYSTEM_PROMPT = "You are a terse assistant.";
export const configHash = generateConfigHash(SYSTEM_PROMPT);
export const SYSTEM: CacheMessage = { role: "system", content: SYSTEM_PROMPT };

export const user = (content: string): CacheMessage => ({ role: "user", content });
export const assistant = (content: string): CacheMessage => ({ role: "assistant", content });

/** A conversation of `turns` user/assistant exchanges after the system prompt, tagged `tag`. */
export function conversation(tag: string, turns: number): CacheMessage[] {
  const history = [SYSTEM];
  for (let i = 0; i < turns; i++) history.push(user(`${tag} question ${i}`), assistant(`${tag} answer ${i}`));
  return history;
}

/**
 * A fake state that proves it is whole: random bytes followed by their SHA-256, so a reader
 * can tell a complete state from a torn or mixed one without knowing what was written.
 */
export async function writeSelfCheckingState(filePath: string, size = 4096): Promise<void> {
  const body = randomBytes(size);
  await fs.writeFile(filePath, Buffer.concat([body, createHash("sha256").update(body).digest()]));
}

export function isWholeState(bytes: Buffer): boolean {
  if (bytes.length <= 32) return false;
  const body = bytes.subarray(0, bytes.length - 32);
  return createHash("sha256").update(body).digest().equals(bytes.subarray(bytes.length - 32));
}

/**
 * Commit `history` (ending with an assistant reply) as an auto-mode cache, the way a handler
 * does over its turns: the last turn looks up history minus its last two messages, and
 * commits history as its target. Returns the committed cache path.
 */
export async function commitAutoConversation(session: KvCacheSession, history: readonly CacheMessage[], size = 4096): Promise<string> {
  const prompt = history.slice(0, -1);
  const turn = await session.beginTurn({
    kind: "auto",
    configHash,
    history: prompt,
    primeIfMissing: (p) => writeSelfCheckingState(p, 64),
  });
  await writeSelfCheckingState(turn.savePath, size);
  const targetCachePath = session.autoCachePath(configHash, history);
  const outcome = await session.commitTurn(turn, { kind: "autoRename", targetCachePath, messageCount: history.length });
  if (!outcome.committed) throw new Error("commit failed");
  return targetCachePath;
}

/** Commit `history` as the named cache `key`, passing the history so it is indexed. */
export async function commitNamedConversation(
  session: KvCacheSession,
  key: string,
  history: readonly CacheMessage[],
  options: { size?: number; passHistory?: boolean } = {},
): Promise<string> {
  const turn = await session.beginTurn({ kind: "custom", customKey: key, configHash, primeIfMissing: (p) => writeSelfCheckingState(p, 64) });
  await writeSelfCheckingState(turn.savePath, options.size ?? 4096);
  await session.commitTurn(turn, {
    kind: "static",
    messageCount: history.length,
    ...(options.passHistory === false ? {} : { history }),
  });
  return turn.cachePath;
}
