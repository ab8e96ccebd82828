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

/** The model directories under one key directory (`keyDir` itself must not be a symlink). */
export async function scanKeyDir(root: string, cacheKey: string, modelId?: string): Promise<ScannedModelDir[]> {
  const keyDir = path.join(root, cacheKey);
  const keyStat = await fs.lstat(keyDir).catch(() => null);
  if (!keyStat?.isDirectory()) return [];
  const models = modelId === undefined ? (await readDirs(keyDir)).filter((d) => d.isDirectory()).map((d) => d.name) : [modelId];
  const result: ScannedModelDir[] = [];
  for (const model of models) {
    const dir = path.join(keyDir, model);
    const st = await fs.lstat(dir).catch(() => null);
    if (!st?.isDirectory()) continue;
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

/** Every model directory under the root. */
export async function* scanRoot(root: string): AsyncGenerator<ScannedModelDir> {
  for (const cacheKey of await listKeyDirs(root)) {
    for (const modelDir of await scanKeyDir(root, cacheKey)) yield modelDir;
  }
}
