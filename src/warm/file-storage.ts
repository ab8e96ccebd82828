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
 * Writes are atomic: a temp file in the same directory, written and fsynced, renamed over
 * the target, then the directory fsynced (best effort). In-process, operations on one key
 * run in call order, so concurrent `set`s never lose one and the last call wins; a read
 * waits for the writes issued before it. Reads never throw for what is on disk: a missing,
 * unreadable or corrupt file is an absent key.
 */
import { createHash, randomBytes } from "node:crypto";
import { mkdir, open, readdir, readFile, rename, rm, unlink } from "node:fs/promises";
import { join } from "node:path";
import { errnoCode, fsWriteError, KvKeepError } from "../errors.js";
import { type Logger, logLine, silentLogger } from "../logger.js";
import type { SettingsStorage } from "./types.js";

export interface FileSettingsStorageOptions {
  /** Where unreadable or corrupt files are reported (at warn). Default: silent. */
  readonly logger?: Logger;
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

/** fsync a directory so a rename in it is durable; not every platform allows it, so best effort. */
async function syncDirectory(dir: string): Promise<void> {
  let handle;
  try {
    handle = await open(dir, "r");
    await handle.sync();
  } catch {
    // EISDIR/EPERM on Windows and some file systems: the rename is still atomic.
  } finally {
    await handle?.close().catch(() => undefined);
  }
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
  const logger = options.logger ?? silentLogger;
  /** The last queued operation per key; operations on a key run one after another. */
  const queues = new Map<string, Promise<void>>();
  let tempCounter = 0;

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

  /** The value in one file, or null if it is missing, unreadable or not ours for `expectedKey`. */
  async function readEntry(fileName: string, expectedKey?: string): Promise<{ key: string; value: string } | null> {
    const path = join(dir, fileName);
    let text: string;
    try {
      text = await readFile(path, "utf8");
    } catch (error) {
      if (errnoCode(error) !== "ENOENT") warn("unreadable file; treated as absent", { path, error: error as Error });
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
    warn("corrupt file; treated as absent", { path });
    return null;
  }

  async function writeEntry(key: string, value: string): Promise<void> {
    const fileName = fileNameOf(key);
    const target = join(dir, fileName);
    const temp = join(dir, `.${fileName}.${process.pid}.${tempCounter++}.${randomBytes(4).toString("hex")}.tmp`);
    const data = JSON.stringify({ v: 1, key, value });
    let handle;
    try {
      await mkdir(dir, { recursive: true });
      handle = await open(temp, "wx");
      await handle.writeFile(data, "utf8");
      await handle.sync();
      await handle.close();
      handle = undefined;
      await rename(temp, target);
    } catch (error) {
      await handle?.close().catch(() => undefined);
      await rm(temp, { force: true }).catch(() => undefined);
      throw fsWriteError(`saving warm setting ${JSON.stringify(key)}`, error);
    }
    await syncDirectory(dir);
  }

  async function removeEntry(key: string): Promise<void> {
    try {
      await unlink(join(dir, fileNameOf(key)));
    } catch (error) {
      if (errnoCode(error) === "ENOENT") return;
      throw fsWriteError(`deleting warm setting ${JSON.stringify(key)}`, error);
    }
    await syncDirectory(dir);
  }

  async function get(key: string): Promise<string | null> {
    checkString(key, "key");
    return enqueue(key, async () => (await readEntry(fileNameOf(key), key))?.value ?? null);
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
      return enqueue(key, () => removeEntry(key));
    },

    async has(key) {
      return (await get(key)) !== null;
    },

    async keys(prefix) {
      if (prefix !== undefined) checkString(prefix, "prefix");
      // See every write issued before this call.
      await Promise.all([...queues.values()]);
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
