/**
 * The default settings storage for warming: small string values in a directory
 * (kvkeep puts it in the cache root; any directory works).
 *
 * Layout: one file per key, `<sha256(key) as hex>.json`, holding
 * `{"v":1,"key":<key>,"value":<value>}`. Why one file per key rather than one file for all:
 * - Two processes sharing a cache root may change settings of different conversations at
 *   the same time. With one shared file each write is a read-modify-write of everything,
 *   and without a cross-process lock one process silently reverts the other's change.
 *   With a file per key, writes to different keys never touch the same file, and writes to
 *   the same key are last-writer-wins, which is what a setting means.
 * - A corrupt file costs one key its value (it reads as absent, i.e. defaults), not all of them.
 * - Hashed names are safe for any key (`/`, `..`, NUL, thousands of characters) and cannot
 *   collide on case-insensitive file systems, unlike base64; the key is kept inside the file
 *   (and checked on read), so `keys()` reads the files, which is fine for a few settings.
 *
 * Writes are atomic (the durable layer's `writeFileAtomic`: a temp file in the same
 * directory, written and fsynced, renamed over the target), then the directory is fsynced
 * (best effort). In-process, operations on one key run in call order, so concurrent `set`s
 * never lose one and the last call wins; a read waits for the writes issued before it.
 *
 * Nothing on disk is trusted by name (the directory is shared with other processes): a
 * settings file is read through the native layer's bounded safe read — opened without
 * following a symlink and without blocking, a regular file of at most
 * SETTINGS_FILE_MAX_BYTES — so a symlink, FIFO, device, directory or huge file there reads as
 * absent at once (and a `set` replaces it). With `root`, the levels from it down to `dir`
 * are created one at a time and must be real directories: a symlinked `<root>/.kvkeep` can
 * neither redirect reads nor writes. Reads never throw for what is on disk: a missing,
 * unreadable or corrupt file is an absent key.
 */
import { createHash } from "node:crypto";
import { readdir } from "node:fs/promises";
import path from "node:path";
import { assertRealDirs, inspectFile, mkdirUnderRoot, removeEntry, writeFileAtomic } from "../durable/files.js";
import { errnoCode, KvKeepError } from "../errors.js";
import { type Logger, logLine, silentLogger } from "../logger.js";
import { loadNativeFs, type NativeFs } from "../native/index.js";
import type { SettingsStorage } from "./types.js";

/**
 * The largest settings file read or written (64 KiB; a warm setting is ~40 bytes). A bigger
 * file is never read (absent), and a `set` whose file would exceed it is INVALID_ARGUMENT.
 */
export const SETTINGS_FILE_MAX_BYTES = 64 * 1024;

export interface FileSettingsStorageOptions {
  /** Where unreadable or corrupt files are reported (at warn). Default: silent. */
  readonly logger?: Logger;
  /**
   * The directory `dir` lies in whose own path is trusted (a store's root: `createStoreWarmer`
   * passes it). The levels below it down to `dir` are created one at a time and must be real
   * directories, not symlinks or files: otherwise reads see no settings (logged) and writes
   * fail with UNSAFE_PATH, so nothing is read or written elsewhere. Default: `dir` itself —
   * taken as given, created with its parents if missing.
   */
  readonly root?: string;
}

const FILE_NAME = /^[0-9a-f]{64}\.json$/;

function fileNameOf(key: string): string {
  return `${createHash("sha256").update(key, "utf8").digest("hex")}.json`;
}

function checkString(value: unknown, argument: string): asserts value is string {
  if (typeof value !== "string") {
    throw new KvKeepError("INVALID_ARGUMENT", `${argument} must be a string.`, { argument });
  }
}

/** The levels from `root` down to `dir` (none when they are the one directory); INVALID_ARGUMENT when `dir` is not inside `root`. */
function levelsBelow(root: string, dir: string): string[] {
  const relative = path.relative(path.resolve(root), path.resolve(dir));
  if (relative === "") return [];
  if (relative.startsWith("..") || path.isAbsolute(relative)) {
    throw new KvKeepError("INVALID_ARGUMENT", `dir (${dir}) must be inside root (${root}).`, { argument: "root" });
  }
  return relative.split(path.sep);
}

/**
 * A {@link SettingsStorage} keeping each key in its own JSON file under `dir`
 * (created on the first write). See the module comment for the layout and guarantees.
 */
export function createFileSettingsStorage(dir: string, options: FileSettingsStorageOptions = {}): SettingsStorage {
  checkString(dir, "dir");
  if (dir.length === 0) {
    throw new KvKeepError("INVALID_ARGUMENT", "dir must name a directory.", { argument: "dir" });
  }
  if (options.root !== undefined) {
    checkString(options.root, "root");
    if (options.root.length === 0) throw new KvKeepError("INVALID_ARGUMENT", "root must name a directory.", { argument: "root" });
  }
  const logger = options.logger ?? silentLogger;
  const root = options.root ?? dir;
  const levels = levelsBelow(root, dir);
  let fsBackend: NativeFs | undefined;
  const nativeFs = (): NativeFs => (fsBackend ??= loadNativeFs());
  /** The last queued operation per key; operations on a key run one after another. */
  const queues = new Map<string, Promise<void>>();

  function warn(message: string, fields: Record<string, unknown>): void {
    try {
      logger.warn(logLine(`warm settings: ${message}`, { dir, ...fields }));
    } catch {
      // Logging must not break reads.
    }
  }

  /** Queue `op` behind earlier operations on `key`; the queue itself never rejects. */
  function enqueue<T>(key: string, op: () => Promise<T>): Promise<T> {
    const previous = queues.get(key) ?? Promise.resolve();
    const result = previous.then(op);
    const tail = result.then(
      () => undefined,
      () => undefined,
    );
    queues.set(key, tail);
    void tail.then(() => {
      if (queues.get(key) === tail) queues.delete(key);
    });
    return result;
  }

  /**
   * Whether `dir` can be read: true when every level below `root` is a real directory,
   * false when one is missing or (logged) is a symlink or file — never through it.
   */
  async function dirReadable(): Promise<boolean> {
    try {
      return await assertRealDirs(root, levels);
    } catch (error) {
      warn("the settings directory is not a plain directory below the root; settings read as absent", { error: error as Error });
      return false;
    }
  }

  /** The value in one file, or null if it is missing, unreadable, not a small regular file or not ours for `expectedKey`. */
  async function readEntry(fileName: string, expectedKey?: string): Promise<{ key: string; value: string } | null> {
    const filePath = path.join(dir, fileName);
    let text: string;
    try {
      const read = await nativeFs().readFileBounded(filePath, SETTINGS_FILE_MAX_BYTES);
      if (read === null) return null;
      text = read.data.toString("utf8");
    } catch (error) {
      warn("unreadable file (not a small regular file?); treated as absent", { path: filePath, error: error as Error });
      return null;
    }
    try {
      const parsed: unknown = JSON.parse(text);
      if (typeof parsed === "object" && parsed !== null && !Array.isArray(parsed)) {
        const record = parsed as Record<string, unknown>;
        const key = record["key"];
        const value = record["value"];
        if (
          record["v"] === 1 &&
          typeof key === "string" &&
          typeof value === "string" &&
          fileNameOf(key) === fileName &&
          (expectedKey === undefined || key === expectedKey)
        ) {
          return { key, value };
        }
      }
    } catch {
      // Fall through: corrupt.
    }
    warn("corrupt file; treated as absent", { path: filePath });
    return null;
  }

  /** fsync `dir` so a rename or unlink in it is durable; not every platform allows it, so best effort. */
  async function syncDir(): Promise<void> {
    await nativeFs()
      .fsyncDir(dir)
      .catch(() => undefined);
  }

  async function writeEntry(key: string, value: string): Promise<void> {
    const data = JSON.stringify({ v: 1, key, value });
    if (Buffer.byteLength(data, "utf8") > SETTINGS_FILE_MAX_BYTES) {
      throw new KvKeepError(
        "INVALID_ARGUMENT",
        `the setting ${JSON.stringify(key.slice(0, 80))} is too large: its file would exceed ${SETTINGS_FILE_MAX_BYTES} bytes, the most a settings file may hold.`,
        { argument: "value" },
      );
    }
    const target = path.join(dir, fileNameOf(key));
    // Level by level, refusing a symlink or file on the way (UNSAFE_PATH).
    await mkdirUnderRoot(nativeFs(), root, ...levels);
    // Anything but a regular file where the file goes (a directory, FIFO, symlink) is no setting: it goes first.
    if ((await inspectFile(target, nativeFs())).kind === "other") await removeEntry(target);
    await writeFileAtomic(nativeFs(), target, data, { syncDir: false });
    await syncDir();
  }

  async function deleteEntry(key: string): Promise<void> {
    // A missing level: nothing stored. A symlinked one: UNSAFE_PATH, never an unlink through it.
    if (!(await assertRealDirs(root, levels))) return;
    if (await removeEntry(path.join(dir, fileNameOf(key)))) await syncDir();
  }

  async function get(key: string): Promise<string | null> {
    checkString(key, "key");
    return enqueue(key, async () => ((await dirReadable()) ? ((await readEntry(fileNameOf(key), key))?.value ?? null) : null));
  }

  return {
    get,

    async set(key, value) {
      checkString(key, "key");
      checkString(value, "value");
      return enqueue(key, () => writeEntry(key, value));
    },

    async delete(key) {
      checkString(key, "key");
      return enqueue(key, () => deleteEntry(key));
    },

    async has(key) {
      return (await get(key)) !== null;
    },

    async keys(prefix) {
      if (prefix !== undefined) checkString(prefix, "prefix");
      // See every write issued before this call.
      await Promise.all([...queues.values()]);
      if (!(await dirReadable())) return [];
      let names: string[];
      try {
        names = await readdir(dir);
      } catch (error) {
        if (errnoCode(error) !== "ENOENT") warn("unreadable directory; treated as empty", { error: error as Error });
        return [];
      }
      const entries = await Promise.all(names.filter((name) => FILE_NAME.test(name)).map((name) => readEntry(name)));
      const keys: string[] = [];
      for (const entry of entries) {
        if (entry !== null && (prefix === undefined || entry.key.startsWith(prefix))) keys.push(entry.key);
      }
      return keys.sort();
    },
  };
}
