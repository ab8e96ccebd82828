/** Small fs helpers with one meaning each: identity, atomic writes, idempotent removal, pruning. */
import { constants as fsConstants, promises as fs } from "node:fs";
import path from "node:path";
import { errnoCode, fsWriteError, KvKeepError } from "../errors.js";
import { crashPoint } from "./crash-points.js";
import { isOwnDirLevel } from "../layout/paths.js";
import type { FileIdentity } from "./identity.js";
import { ownTempPath } from "./temp-owner.js";
import { type EntryType, loadNativeFs, type NativeFs } from "../native/index.js";

/** What is at a path kvkeep keeps a file at: nothing, a regular file (with its identity), or something else. */
export type FileState =
  | { kind: "missing" }
  | { kind: "file"; identity: FileIdentity }
  /** A symlink (never followed), directory, FIFO, socket or device. */
  | { kind: "other"; type: EntryType };

/**
 * What is at `filePath`, from lstat on the entry itself (the native addon's `identity`, or
 * the fallback's bigint lstat): a symlink is reported as one and never followed, and
 * nothing is opened, so a FIFO or device costs nothing. Failures other than "nothing there"
 * (EIO, EACCES, …) are `KvKeepError`s like every error kvkeep raises.
 */
export async function inspectFile(filePath: string, fsBackend: Pick<NativeFs, "identity"> = loadNativeFs()): Promise<FileState> {
  const entry = await fsBackend.identity(filePath);
  if (entry === null) return { kind: "missing" };
  if (entry.type !== "file") return { kind: "other", type: entry.type };
  return { kind: "file", identity: { size: entry.size, ino: entry.ino, mtimeNs: entry.mtimeNs } };
}

/**
 * Size, inode and mtime of the regular file at `filePath` (lstat: never through a symlink);
 * null when there is none — nothing, or a symlink, directory, FIFO or device.
 */
export async function statIdentity(filePath: string): Promise<FileIdentity | null> {
  const state = await inspectFile(filePath);
  return state.kind === "file" ? state.identity : null;
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

/**
 * Remove whatever is at a path where kvkeep keeps one of its own files: a file, symlink
 * (the link itself), FIFO or device node is unlinked; a directory planted there is removed
 * with its contents (rm never follows symlinks inside it, so nothing outside is touched).
 * True if something was removed.
 */
export async function removeEntry(filePath: string): Promise<boolean> {
  try {
    return await unlinkIfExists(filePath);
  } catch (error) {
    const cause = (error as { cause?: unknown }).cause;
    if (errnoCode(cause) !== "EISDIR" && errnoCode(cause) !== "EPERM") throw error;
    if (!(await fs.lstat(filePath).catch(() => null))?.isDirectory()) throw error;
    try {
      await fs.rm(filePath, { recursive: true, force: true });
    } catch (rmError) {
      throw fsWriteError(`removing the directory ${filePath}`, rmError);
    }
    return true;
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
  fsBackend: NativeFs,
  target: string,
  data: string | Uint8Array,
  options: { syncDir: boolean },
): Promise<void> {
  const temp = ownTempPath(target);
  try {
    await writeSynced(temp, data);
    await crashPoint("atomic-write:after-temp-synced");
    await fs.rename(temp, target);
  } catch (error) {
    await unlinkIfExists(temp).catch(() => {});
    throw error instanceof KvKeepError ? error : fsWriteError(`writing ${path.basename(target)}`, error);
  }
  await crashPoint("atomic-write:after-rename");
  if (options.syncDir) await fsBackend.fsyncDir(path.dirname(target));
}

/** Directories kvkeep creates are its user's only: rwx for the owner, nothing for others. */
export const PRIVATE_DIR_MODE = 0o700;

/**
 * Create `<root>/<a>/<b>` and make sure every level below the root is a real directory,
 * not a symlink planted to lead writes outside the root: one level at a time, each created
 * only where nothing is and checked with lstat before the next is made inside it (a
 * recursive mkdir would create the next level through a planted symlink). Directories it
 * creates are made durable: the parent of each is fsynced, so a commit into a new
 * directory that has resolved survives a power cut (its entry would otherwise live only
 * in memory). Everything it creates — the root, missing directories above it, and the
 * levels below — is private to the user (0700): caches hold conversations, and a root is
 * only as private as its directories (docs/security.md, "What a scope does not do").
 */
export async function mkdirUnderRoot(fsBackend: Pick<NativeFs, "fsyncDir">, root: string, ...components: string[]): Promise<string> {
  const full = path.join(root, ...components);
  for (let attempt = 0; ; attempt++) {
    try {
      // The root itself is the caller's choice, links and all.
      const rootCreated = await fs.mkdir(root, { recursive: true, mode: PRIVATE_DIR_MODE });
      const created: string[] = [];
      if (rootCreated !== undefined) {
        let dir = path.dirname(path.resolve(rootCreated));
        created.push(dir);
        for (const part of path.relative(dir, path.dirname(path.resolve(root))).split(path.sep).filter(Boolean)) {
          dir = path.join(dir, part);
          created.push(dir);
        }
      }
      let current = root;
      for (const component of components) {
        const parent = current;
        current = path.join(current, component);
        try {
          await fs.mkdir(current, { mode: PRIVATE_DIR_MODE });
          created.push(parent);
        } catch (error) {
          if (errnoCode(error) !== "EEXIST") throw error;
        }
        const st = await fs.lstat(current);
        if (!st.isDirectory()) {
          throw new KvKeepError(
            "UNSAFE_PATH",
            `${current} is not a plain directory (a symlink or file); kvkeep never reads or writes through it. Remove it or use another root.`,
          );
        }
      }
      // Each new directory's entry lives in its parent: sync those parents.
      for (const dir of created) await fsBackend.fsyncDir(dir);
      return full;
    } catch (error) {
      // Another process pruned an empty directory between our mkdir and the next level (or
      // its fsync, which reports ENOENT as the cause of an IO_ERROR): again — unless the
      // file system is read-only, where a recursive mkdir reports ENOENT for the missing
      // level, not EROFS: then say what is really wrong instead of retrying.
      const code = error instanceof KvKeepError ? errnoCode(error.cause) : errnoCode(error);
      if (code === "EROFS" || (code === "ENOENT" && (await onReadOnlyFs(full)))) {
        throw new KvKeepError(
          "IO_ERROR",
          `creating ${full} failed: the cache root is on a read-only file system (EROFS). kvkeep needs a writable root to save caches: remount it read-write or open the store on another root.`,
          { cause: error },
        );
      }
      if (code !== "ENOENT" || attempt >= 16) {
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
 * Only the levels kvkeep makes — a key directory and its model directories, and under
 * `.scopes/` a scope's space and its key and model directories (isOwnDirLevel) — are ever
 * removed; any other `dir` removes nothing.
 */
export async function pruneEmptyDirs(root: string, dir: string, isInUse: (dir: string) => boolean): Promise<void> {
  let current = path.resolve(dir);
  const top = path.resolve(root);
  while (current !== top && current.startsWith(top + path.sep)) {
    if (!isOwnDirLevel(path.relative(top, current).split(path.sep))) return;
    if (isInUse(current)) return;
    try {
      await fs.rmdir(current);
    } catch {
      return; // not empty, already gone, or not ours to remove: stop quietly
    }
    current = path.dirname(current);
  }
}
