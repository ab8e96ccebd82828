/**
 * A fake engine for unit tests of the session logic: it "saves state" by writing bytes to
 * the path it is given, like llama.cpp's state save. The real engine is tested in test/engine.
 */
import { randomBytes } from "node:crypto";
import { promises as fs } from "node:fs";
import type { KvCacheSession, TurnHandle } from "../../src/index.js";

/** Write a state file of `size` random bytes (what an engine's save does). */
export async function writeState(filePath: string, size = 1024 + Math.floor(Math.random() * 4096)): Promise<Buffer> {
  const bytes = randomBytes(size);
  await fs.writeFile(filePath, bytes);
  return bytes;
}

/** A primeIfMissing that writes a small state and counts its calls. */
export function countingPrime(size = 512): ((p: string) => Promise<void>) & { calls: string[] } {
  const calls: string[] = [];
  const prime = async (p: string): Promise<void> => {
    calls.push(p);
    await writeState(p, size);
  };
  return Object.assign(prime, { calls });
}

/** One full custom turn: begin, save a new state at savePath, commit. Returns the handle. */
export async function customTurn(
  session: KvCacheSession,
  customKey: string,
  configHash: string,
  messageCount: number,
): Promise<TurnHandle> {
  const turn = await session.beginTurn({ kind: "custom", customKey, configHash, primeIfMissing: countingPrime() });
  await writeState(turn.savePath);
  await session.commitTurn(turn, { kind: "static", messageCount });
  return turn;
}

/**
 * Every file under `dir`, relative, sorted (to compare trees). kvkeep's own directory
 * `.kvkeep/` (the retention index log, warm settings) is left out unless `internal` is set:
 * it holds no cache state.
 */
export async function listTree(dir: string, options: { internal?: boolean } = {}): Promise<string[]> {
  const out: string[] = [];
  async function walk(d: string, rel: string): Promise<void> {
    let entries;
    try {
      entries = await fs.readdir(d, { withFileTypes: true });
    } catch {
      return;
    }
    for (const e of entries) {
      if (!rel && e.name === ".kvkeep" && !options.internal) continue;
      const r = rel ? `${rel}/${e.name}` : e.name;
      if (e.isDirectory()) {
        out.push(`${r}/`);
        await walk(`${d}/${e.name}`, r);
      } else out.push(r);
    }
  }
  await walk(dir, "");
  return out.sort();
}
