/**
 * The on-disk record of deletes, `<root>/.kvkeep/deletes.log`, shared by every process on a
 * root: how a turn learns that a delete from another process covered its cache while it
 * was open, so it never commits it back (ARCHITECTURE.md, "Deletes across processes").
 *
 * A delete appends a `start` record for its scope before it removes anything, and an `end`
 * record when it has removed everything. A turn takes a mark (the log's inode and size)
 * right after it takes its cache's lock, and before it keeps anything it installed it reads
 * what was appended since its mark: any record whose scope covers its cache means a delete
 * overlapped the turn. Records are one JSON line each, appended with one write through
 * O_APPEND: `{"s":"<scope>","p":"start"|"end"}`, scope "" for everything, "<key>" or
 * "<key>/<model>" — prefixed with `.scopes/<scope id>/` for a key of an isolation scope, as
 * its path is (src/layout/paths.ts), so a delete in one scope never covers another's cache.
 * The common case — no delete since the mark — costs one lstat.
 *
 * Past ROTATE_BYTES the appender that takes the rotation lock renames the log to
 * `deletes.log.1` (replacing the previous one); a mark on the rotated inode then reads the
 * rest of `.1` and the new log. A mark older than two rotations cannot be checked and
 * counts as deleted (a turn spanning ~20 000 deletes).
 *
 * Pure fs, no turns: the store appends, the session asks.
 */
import { constants as fsConstants, promises as fs } from "node:fs";
import path from "node:path";
import { errnoCode, fsWriteError, KvKeepError } from "../errors.js";
import { internalDir, scopeComponents } from "../layout/paths.js";
import { PRIVATE_DIR_MODE } from "./files.js";
import type { NativeFs } from "../native/index.js";
import { openRegularFile } from "../native/safe-open.js";

export const DELETE_LOG_NAME = "deletes.log";
export const DELETE_LOG_ROTATE_BYTES = 1 << 20;

/** Where the log was when a turn took its lock. */
export interface DeleteLogMark {
  /** The log's inode (decimal), or null when there was no log. */
  ino: string | null;
  size: number;
}

export type DeletePhase = "start" | "end";

interface LogFile {
  ino: string;
  size: number;
}

/**
 * The scope of a delete, as recorded: "" (everything), "<key>" or "<key>/<model>", each
 * after `.scopes/<scope id>/` for a key of an isolation scope (`scopeId`).
 */
export function deleteScope(target: { scopeId?: string | null | undefined; cacheKey?: string | undefined; modelId?: string | undefined }): string {
  if (target.cacheKey === undefined) return "";
  const key = [...scopeComponents(target.scopeId ?? null), target.cacheKey].join("/");
  return target.modelId === undefined ? key : `${key}/${target.modelId}`;
}

/** True when a delete of `scope` covers the cache `[.scopes/<scope id>/]<key>/<model>/…`. */
export function scopeCovers(scope: string, cacheKey: string, modelId: string, scopeId: string | null = null): boolean {
  if (scope === "") return true;
  const key = [...scopeComponents(scopeId), cacheKey].join("/");
  return scope === key || scope === `${key}/${modelId}`;
}

export class DeleteLog {
  readonly path: string;
  readonly rotatedPath: string;
  readonly #dir: string;
  readonly #root: string;
  readonly #fsBackend: NativeFs;
  readonly #rotateBytes: number;

  /** `rotateBytes`: tests shrink it to rotate after a few records. */
  constructor(root: string, fsBackend: NativeFs, options: { rotateBytes?: number } = {}) {
    this.#rotateBytes = options.rotateBytes ?? DELETE_LOG_ROTATE_BYTES;
    this.#root = root;
    this.#dir = internalDir(root);
    this.path = path.join(this.#dir, DELETE_LOG_NAME);
    this.rotatedPath = `${this.path}.1`;
    this.#fsBackend = fsBackend;
  }

  /** The mark a turn keeps: where the log ends now. */
  async mark(): Promise<DeleteLogMark> {
    const file = await this.#stat(this.path);
    return file ? { ino: file.ino, size: file.size } : { ino: null, size: 0 };
  }

  /**
   * Append one record (one write through O_APPEND: whole lines, never interleaved). Called
   * by a delete before it removes anything (`start`) and after (`end`). Fails with a
   * KvKeepError when the record cannot be written (the caller decides what that means).
   */
  async append(scope: string, phase: DeletePhase): Promise<void> {
    const line = `${JSON.stringify({ s: scope, p: phase })}\n`;
    try {
      if (!(await this.#ensureDir())) return;
      const handle = await openRegularFile(this.path, fsConstants.O_WRONLY | fsConstants.O_APPEND | fsConstants.O_CREAT);
      let size: number;
      try {
        await handle.write(line);
        size = (await handle.stat()).size;
      } finally {
        await handle.close();
      }
      if (phase === "end" && size > this.#rotateBytes) await this.#rotate();
    } catch (error) {
      throw error instanceof KvKeepError ? error : fsWriteError(`recording a delete in ${this.path}`, error);
    }
  }

  /**
   * True when a record appended after `mark` covers `<cacheKey>/<modelId>`. A partial last
   * line is a record still being written: its delete removes nothing before it is complete,
   * so whatever the caller installed before asking is still in its way.
   */
  async coveredSince(mark: DeleteLogMark, cacheKey: string, modelId: string, scopeId: string | null = null): Promise<boolean> {
    const current = await this.#stat(this.path);
    if (current && current.ino === mark.ino) {
      if (current.size === mark.size) return false;
      return this.#covers(await this.#readRange(this.path, current, mark.size), cacheKey, modelId, scopeId);
    }
    // The log was created or rotated since the mark.
    const ranges: Array<{ file: string; from: number }> = [];
    if (mark.ino !== null) {
      const rotated = await this.#stat(this.rotatedPath);
      if (!rotated || rotated.ino !== mark.ino) return true; // rotated twice: cannot know, assume the worst
      ranges.push({ file: this.rotatedPath, from: mark.size });
    }
    if (current) ranges.push({ file: this.path, from: 0 });
    for (const range of ranges) {
      const file = await this.#stat(range.file);
      if (file && this.#covers(await this.#readRange(range.file, file, range.from), cacheKey, modelId, scopeId)) return true;
    }
    return false;
  }

  #covers(text: string, cacheKey: string, modelId: string, scopeId: string | null): boolean {
    const lines = text.split("\n");
    lines.pop(); // the part after the last newline: empty, or a record still being written
    for (const line of lines) {
      let record: { s?: unknown };
      try {
        record = JSON.parse(line) as { s?: unknown };
      } catch {
        return true; // a garbled line could have been a delete: assume it covered us
      }
      if (typeof record.s !== "string" || scopeCovers(record.s, cacheKey, modelId, scopeId)) return true;
    }
    return false;
  }

  async #readRange(filePath: string, file: LogFile, from: number): Promise<string> {
    const length = Math.max(0, file.size - from);
    if (length === 0) return "";
    const handle = await openRegularFile(filePath);
    try {
      const buffer = Buffer.alloc(length);
      let got = 0;
      while (got < length) {
        const { bytesRead } = await handle.read(buffer, got, length - got, from + got);
        if (bytesRead === 0) break;
        got += bytesRead;
      }
      return buffer.subarray(0, got).toString("utf8");
    } finally {
      await handle.close();
    }
  }

  async #stat(filePath: string): Promise<LogFile | null> {
    const entry = await this.#fsBackend.identity(filePath);
    if (entry === null) return null;
    if (entry.type !== "file") {
      throw new KvKeepError("UNSAFE_PATH", `${filePath} is not a regular file (a symlink, FIFO, device or directory); kvkeep does not use it.`);
    }
    return { ino: entry.ino, size: entry.size };
  }

  /**
   * `<root>/.kvkeep`, created if missing — never through a symlink. False when the root
   * itself does not exist: there is no cache to protect, and a delete must not create it.
   */
  async #ensureDir(): Promise<boolean> {
    try {
      await fs.mkdir(this.#dir, { mode: PRIVATE_DIR_MODE });
    } catch (error) {
      if (errnoCode(error) === "ENOENT") return false;
      if (errnoCode(error) !== "EEXIST") throw error;
    }
    if (!(await fs.lstat(this.#dir)).isDirectory()) {
      throw new KvKeepError("UNSAFE_PATH", `${this.#dir} is not a plain directory; kvkeep does not record deletes through it.`);
    }
    return true;
  }

  /** Move the log aside, once, by whoever gets the rotation lock without waiting. */
  async #rotate(): Promise<void> {
    const lock = this.#fsBackend.tryLockFile(`${this.path}.lock`, "exclusive", { under: this.#root });
    if (!lock) return;
    try {
      const current = await this.#stat(this.path);
      if (current && current.size > this.#rotateBytes) await fs.rename(this.path, this.rotatedPath);
    } finally {
      lock.release();
    }
  }
}
