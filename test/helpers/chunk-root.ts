/**
 * What chunked commits leave on a root's disk, for tests that check it after crashes and
 * races: its chunk files, its temps, and a way to let the chunk GC's margin pass without
 * waiting it out.
 */
import { readdirSync } from "node:fs";
import { promises as fs } from "node:fs";
import path from "node:path";
import { listChunkFiles } from "../../src/chunkfiles/collect.js";
import { TEMP_SUFFIX } from "../../src/layout/paths.js";

/** `<context>/<id>` of every chunk file on the root (the form `referencedChunks` returns). */
export async function chunkKeysOnDisk(root: string): Promise<Set<string>> {
  return new Set((await listChunkFiles(root)).chunks.map((c) => `${c.context}/${c.id}`));
}

/**
 * Set every chunk file's mtime an hour back: chunks written long ago. A sweep then collects
 * every one no manifest names, as it would once CHUNK_GC_MARGIN_MS has passed.
 */
export async function ageChunkFiles(root: string): Promise<void> {
  const past = new Date(Date.now() - 3_600_000);
  for (const chunk of (await listChunkFiles(root)).chunks) await fs.utimes(chunk.path, past, past);
}

/** Every temp file anywhere below `root` (a writer's file not yet renamed to its name: cache dirs, chunk dirs, `.kvkeep`). */
export function tempFilesUnder(root: string): string[] {
  const found: string[] = [];
  const walk = (dir: string): void => {
    for (const entry of readdirSync(dir, { withFileTypes: true })) {
      const p = path.join(dir, entry.name);
      if (entry.isDirectory()) walk(p);
      else if (entry.name.endsWith(TEMP_SUFFIX)) found.push(path.relative(root, p));
    }
  };
  walk(root);
  return found;
}
