/** Small fs helpers with one meaning each: identity, atomic writes, idempotent removal, pruning. */
import { constants as fsConstants, promises as fs } from "node:fs";
import path from "node:path";
import { errnoCode, fsWriteError, KvKeepError } from "../errors.js";
import type { FileIdentity } from "../manifest/format.js";
import { tempPathFor } from "../layout/paths.js";
import type { NativeFs } from "../native/index.js";

/**
 * Size, inode and mtime of a regular file; null when it does not exist. Other failures
 * (EIO, ELOOP, EACCES, …) are `KvKeepError`s like every error kvkeep raises.
 */
export async function statIdentity(filePath: string): Promise<FileIdentity | null> {
  try {
    const st = await fs.stat(filePath, { bigint: true });
    if (!st.isFile()) return null;
    return { size: Number(st.size), ino: st.ino.toString(), mtimeNs: st.mtimeNs.toString() };
  } catch (error) {
    if (errnoCode(error) === "ENOENT" || errnoCode(error) === "ENOTDIR") return null;
    throw fsWriteError(`checking ${filePath}`, error);
  }
}

/** Remove a file if it is there; true if it was removed. */
export async function unlinkIfExists(filePath: string): Promise<boolean> {
  try {
    await fs.unlink(filePath);
    return true;
  } catch (error) {
    if (errnoCode(error) === "ENOENT" || errnoCode(error) === "ENOTDIR") return false;
    throw fsWriteError(`removing ${filePath}`, error);
  }
}

/** Create `filePath` (it must not exist), write `data` and fsync it. */
export async function writeSynced(filePath: string, data: string | Uint8Array): Promise<void> {
  const handle = await fs.open(filePath, "wx", 0o644);
  try {
    await handle.writeFile(data);
    await handle.sync();
  } finally {
    await handle.close();
  }
}

/**
 * Write a small file atomically: temp in the same directory, fsync, rename over the target,
 * then (when `syncDir`) fsync the directory so the rename itself is durable.
 * On any failure the temp file is removed and the target is untouched.
 */
export async function writeFileAtomic(
  nfs: NativeFs,
  target: string,
  data: string | Uint8Array,
  options: { syncDir: boolean },
): Promise<void> {
  const temp = tempPathFor(target);
  try {
    await writeSynced(temp, data);
    await fs.rename(temp, target);
  } catch (error) {
    await unlinkIfExists(temp).catch(() => {});
    throw fsWriteError(`writing ${path.basename(target)}`, error);
  }
  if (options.syncDir) await nfs.fsyncDir(path.dirname(target));
}

/**
 * Create `<root>/<a>/<b>` and make sure every level below the root is a real directory,
 * not a symlink planted to lead writes outside the root. Directories it creates are made
 * durable: the parent of each is fsynced, so a commit into a new directory that has
 * resolved survives a power cut (its entry would otherwise live only in memory).
 */
export async function mkdirUnderRoot(nfs: Pick<NativeFs, "fsyncDir">, root: string, ...components: string[]): Promise<string> {
  const full = path.join(root, ...components);
  for (let attempt = 0; ; attempt++) {
    try {
      const firstCreated = await fs.mkdir(full, { recursive: true });
      if (!(await assertRealDirs(root, components))) {
        // Another process pruned a level between our mkdir and the check: again.
        if (attempt >= 16) throw new KvKeepError("IO_ERROR", `${full} keeps disappearing while being created.`);
        continue;
      }
      if (firstCreated !== undefined) {
        // Each new directory's entry lives in its parent: sync from the parent of the
        // first one created down to the parent of the deepest.
        let dir = path.dirname(path.resolve(firstCreated));
        await nfs.fsyncDir(dir);
        for (const part of path.relative(dir, path.dirname(path.resolve(full))).split(path.sep).filter(Boolean)) {
          dir = path.join(dir, part);
          await nfs.fsyncDir(dir);
        }
      }
      return full;
    } catch (error) {
      // A recursive mkdir on a read-only file system reports ENOENT (for the missing
      // level), not EROFS: say what is really wrong instead of retrying.
      if (errnoCode(error) === "EROFS" || (errnoCode(error) === "ENOENT" && (await onReadOnlyFs(full)))) {
        throw new KvKeepError(
          "IO_ERROR",
          `creating ${full} failed: the cache root is on a read-only file system (EROFS). kvkeep needs a writable root to save caches: remount it read-write or open the store on another root.`,
          { cause: error },
        );
      }
      // Another process pruned an empty directory between our mkdir and lstat: again.
      if (errnoCode(error) !== "ENOENT" || attempt >= 16) {
        throw error instanceof KvKeepError ? error : fsWriteError(`creating ${full}`, error);
      }
    }
  }
}

/** True when the nearest existing ancestor of `dir` is on a read-only file system. */
async function onReadOnlyFs(dir: string): Promise<boolean> {
  for (let current = path.resolve(dir); ; current = path.dirname(current)) {
    try {
      await fs.access(current, fsConstants.W_OK);
      return false;
    } catch (error) {
      if (errnoCode(error) === "EROFS") return true;
      if (errnoCode(error) !== "ENOENT" || path.dirname(current) === current) return false;
    }
  }
}

/**
 * True when every level `<root>/<a>/<b>` exists as a real directory; false when one is
 * missing; UNSAFE_PATH when one is a symlink or a file. Creates nothing.
 */
export async function assertRealDirs(root: string, components: readonly string[]): Promise<boolean> {
  let current = root;
  for (const component of components) {
    current = path.join(current, component);
    let st;
    try {
      st = await fs.lstat(current);
    } catch (error) {
      if (errnoCode(error) === "ENOENT") return false;
      throw fsWriteError(`checking ${current}`, error);
    }
    if (!st.isDirectory()) {
      throw new KvKeepError(
        "UNSAFE_PATH",
        `${current} is not a plain directory (a symlink or file); kvkeep never reads or writes through it. Remove it or use another root.`,
      );
    }
  }
  return true;
}

/**
 * Remove now-empty directories from `dir` upwards, stopping below `root` and at the first
 * directory that is not empty or that `isInUse` claims (an in-flight turn still needs it).
 */
export async function pruneEmptyDirs(root: string, dir: string, isInUse: (dir: string) => boolean): Promise<void> {
  let current = path.resolve(dir);
  const top = path.resolve(root);
  while (current !== top && current.startsWith(top + path.sep)) {
    if (isInUse(current)) return;
    try {
      await fs.rmdir(current);
    } catch {
      return; // not empty, already gone, or not ours to remove: stop quietly
    }
    current = path.dirname(current);
  }
}
