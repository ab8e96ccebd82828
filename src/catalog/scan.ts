/**
 * Walk a cache root: `<root>/<cacheKey>/<modelId>/<files>`, then each scope's space
 * `<root>/.scopes/<scope id>/<cacheKey>/<modelId>/<files>` (src/layout/paths.ts). Never
 * follows symlinks and never yields kvkeep's internal directory, so nothing walked is
 * outside the root.
 */
import type { Dirent } from "node:fs";
import { promises as fs } from "node:fs";
import path from "node:path";
import { errnoCode } from "../errors.js";
import { isReservedRootName, SCOPES_DIR_NAME } from "../keys/safe-key.js";
import { SCOPE_ID_PATTERN } from "../keys/scope.js";
import { type CacheFileKind, classifyFileName, spaceDir } from "../layout/paths.js";

export interface ScannedFile {
  name: string;
  path: string;
  kind: CacheFileKind | null;
  configHash: string | null;
}

export interface ScannedModelDir {
  /** The scope whose space holds it (its id), or null for the shared space. */
  scopeId: string | null;
  cacheKey: string;
  modelId: string;
  dir: string;
  files: ScannedFile[];
}

async function readDirs(dir: string): Promise<Dirent[]> {
  try {
    return await fs.readdir(dir, { withFileTypes: true });
  } catch (error) {
    if (errnoCode(error) === "ENOENT" || errnoCode(error) === "ENOTDIR") return [];
    throw error;
  }
}

/**
 * The model directories under one key directory (`keyDir` itself must not be a symlink).
 * `keyDirChecked`: the caller found `cacheKey` as a directory entry of type directory
 * (never a symlink), so it need not be lstat-ed again. `scopeId`: the key of that scope's
 * space (every level down to it lstat-ed), null for the shared space.
 */
export async function scanKeyDir(
  root: string,
  cacheKey: string,
  modelId?: string,
  keyDirChecked = false,
  scopeId: string | null = null,
): Promise<ScannedModelDir[]> {
  const keyDir = path.join(spaceDir(root, scopeId), cacheKey);
  if (!keyDirChecked) {
    if (!(await isPlainSpace(root, scopeId)) || !(await isPlainDir(keyDir))) return [];
  }
  // Listed model directories are plain directories by their entry type (a symlink is not);
  // a named one is lstat-ed.
  const models =
    modelId === undefined
      ? (await readDirs(keyDir)).filter((d) => d.isDirectory()).map((d) => ({ name: d.name, checked: true }))
      : [{ name: modelId, checked: false }];
  const result: ScannedModelDir[] = [];
  for (const { name: model, checked } of models) {
    const dir = path.join(keyDir, model);
    if (!checked) {
      const st = await fs.lstat(dir).catch(() => null);
      if (!st?.isDirectory()) continue;
    }
    const files = (await readDirs(dir))
      .filter((d) => d.isFile())
      .map((d) => {
        const kind = classifyFileName(d.name);
        return { name: d.name, path: path.join(dir, d.name), kind: kind?.kind ?? null, configHash: kind?.configHash ?? null };
      });
    result.push({ scopeId, cacheKey, modelId: model, dir, files });
  }
  return result;
}

async function isPlainDir(dir: string): Promise<boolean> {
  return (await fs.lstat(dir).catch(() => null))?.isDirectory() === true;
}

/** Whether a scope's space is there as plain directories (`.scopes` and its id; never through a symlink). */
async function isPlainSpace(root: string, scopeId: string | null): Promise<boolean> {
  if (scopeId === null) return true;
  return (await isPlainDir(path.join(root, SCOPES_DIR_NAME))) && (await isPlainDir(spaceDir(root, scopeId)));
}

/**
 * Every key directory of one space — the shared space (the root, without kvkeep's own
 * `.kvkeep` and `.scopes`) or a scope's (`scopeId`) — real directories only.
 */
export async function listKeyDirs(root: string, scopeId: string | null = null): Promise<string[]> {
  if (!(await isPlainSpace(root, scopeId))) return [];
  return (await readDirs(spaceDir(root, scopeId))).filter((d) => d.isDirectory() && !isReservedRootName(d.name)).map((d) => d.name);
}

/** The ids of the scopes with a space under the root (real directories named by a scope id). */
export async function listScopeIds(root: string): Promise<string[]> {
  if (!(await isPlainDir(path.join(root, SCOPES_DIR_NAME)))) return [];
  return (await readDirs(path.join(root, SCOPES_DIR_NAME))).filter((d) => d.isDirectory() && SCOPE_ID_PATTERN.test(d.name)).map((d) => d.name);
}

/**
 * Every model directory under the root: the shared space's in key order, then each scope's.
 * Up to `readAhead` key directories are read at once ahead of the consumer: on a root of
 * many small key directories (one per auto conversation) the walk is bound by round trips,
 * not by the disk. `scopeIds`: only these spaces (null for the shared one); default every one.
 */
export async function* scanRoot(root: string, readAhead = 16, scopeIds?: ReadonlyArray<string | null>): AsyncGenerator<ScannedModelDir> {
  const spaces = scopeIds ?? [null, ...(await listScopeIds(root))];
  const keys: Array<{ scopeId: string | null; cacheKey: string }> = [];
  for (const scopeId of spaces) for (const cacheKey of await listKeyDirs(root, scopeId)) keys.push({ scopeId, cacheKey });
  const window: Array<Promise<ScannedModelDir[]>> = [];
  let next = 0;
  const fill = (): void => {
    while (window.length < readAhead && next < keys.length) {
      const { scopeId, cacheKey } = keys[next++]!;
      const pending = scanKeyDir(root, cacheKey, undefined, true, scopeId);
      pending.catch(() => {}); // awaited in turn below; until then a rejection is not unhandled
      window.push(pending);
    }
  };
  fill();
  while (window.length > 0) {
    const modelDirs = await window.shift()!;
    fill();
    for (const modelDir of modelDirs) yield modelDir;
  }
}
