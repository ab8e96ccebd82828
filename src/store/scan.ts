/**
 * Walk a cache root: `<root>/<cacheKey>/<modelId>/<files>`. Never follows symlinks and
 * never yields kvkeep's internal directory, so nothing walked is outside the root.
 */
import type { Dirent } from "node:fs";
import { promises as fs } from "node:fs";
import path from "node:path";
import { errnoCode } from "../errors.js";
import { INTERNAL_DIR_NAME } from "../keys/safe-key.js";
import { type CacheFileKind, classifyFileName } from "../layout/paths.js";

export interface ScannedFile {
  name: string;
  path: string;
  kind: CacheFileKind | null;
  configHash: string | null;
}

export interface ScannedModelDir {
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
 * (never a symlink), so it need not be lstat-ed again.
 */
export async function scanKeyDir(
  root: string,
  cacheKey: string,
  modelId?: string,
  keyDirChecked = false,
): Promise<ScannedModelDir[]> {
  const keyDir = path.join(root, cacheKey);
  if (!keyDirChecked) {
    const keyStat = await fs.lstat(keyDir).catch(() => null);
    if (!keyStat?.isDirectory()) return [];
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
    result.push({ cacheKey, modelId: model, dir, files });
  }
  return result;
}

/** Every key directory under the root (real directories only, internal one excluded). */
export async function listKeyDirs(root: string): Promise<string[]> {
  return (await readDirs(root)).filter((d) => d.isDirectory() && d.name !== INTERNAL_DIR_NAME).map((d) => d.name);
}

/**
 * Every model directory under the root, in key order. Up to `readAhead` key directories
 * are read at once ahead of the consumer: on a root of many small key directories (one
 * per auto conversation) the walk is bound by round trips, not by the disk.
 */
export async function* scanRoot(root: string, readAhead = 16): AsyncGenerator<ScannedModelDir> {
  const keys = await listKeyDirs(root);
  const window: Array<Promise<ScannedModelDir[]>> = [];
  let next = 0;
  const fill = (): void => {
    while (window.length < readAhead && next < keys.length) {
      const pending = scanKeyDir(root, keys[next++]!, undefined, true);
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
