/**
 * The shared append-only index log, `<root>/.kvkeep/index.log`: how stores in several
 * processes tell each other about caches they write, use and remove, without walking the
 * root. Each store appends its own records and reads the others' from the offset it last
 * read. The log is a hint (see ARCHITECTURE.md, "Retention index"): a lost or torn record
 * only makes another store's index slightly stale until its next resync.
 *
 * Appending: records are queued and written by one background flush per batch, each batch
 * in one O_APPEND `write` (whole lines only, so writers never interleave inside a record)
 * through a descriptor opened for that batch (no-follow, regular files only) and closed
 * after it — so a compaction's replacement needs no tracking. A commit never waits for it.
 *
 * Reading: `readNew` returns the complete lines after the last read offset (a trailing
 * line without its newline is left for the next read: a writer may be mid-write), or says
 * the file was replaced (another inode, or shorter than what was read), in which case the
 * reader cannot know what it missed and resyncs from the disk.
 */
import { closeSync, constants as fsConstants, fstatSync, lstatSync, openSync, writeSync } from "node:fs";
import { promises as fs } from "node:fs";
import type { FileHandle } from "node:fs/promises";
import path from "node:path";
import { errnoCode, KvKeepError } from "../errors.js";
import { PRIVATE_DIR_MODE } from "../durable/files.js";
import { internalDir } from "../layout/paths.js";
import { type Logger, logLine } from "../logger.js";
import { openRegularFile, SAFE_OPEN_FLAGS } from "../native/safe-open.js";
import { decodeLines, encodeRecord, type LogRecord } from "./log-record.js";

export const INDEX_LOG_NAME = "index.log";
export const INDEX_LOCK_NAME = "index.lock";

/** Where a reader is in the log: the file (inode) and the offset after the last complete line read. */
export interface LogPosition {
  ino: bigint | null;
  offset: number;
}

export type LogRead = { replaced: true } | { replaced: false; records: LogRecord[]; skipped: number };

const READ_CHUNK = 1 << 20;
/**
 * The largest log `readAll` reads (32 MiB: four times the compaction threshold). A larger one
 * — a snapshot of very many long conversations, or a huge or sparse file planted in a shared
 * root — is not read whole into memory for a hint: the store's walk of the root answers instead.
 */
export const HINT_MAX_BYTES = 32 * 1024 * 1024;
/**
 * A reader further behind than this (an idle store, or a huge or sparse file planted in a
 * shared root) is told the log was replaced: walking the root is cheaper than reading it,
 * and every turn's prefix lookup reads the log.
 */
const MAX_CATCH_UP_BYTES = HINT_MAX_BYTES;
/** Longer than any record (a prefix chain of 4 096 keys is ~80 KB): a line without a newline past this is garbage. */
const MAX_LINE_BYTES = READ_CHUNK;
/**
 * Every open of the log is a safe open (src/native/safe-open.ts): never through a symlink,
 * never blocking on a FIFO, and only a regular file.
 */
const APPEND_FLAGS = fsConstants.O_WRONLY | fsConstants.O_APPEND | fsConstants.O_CREAT;

function notRegularFile(filePath: string): KvKeepError {
  return new KvKeepError("UNSAFE_PATH", `${filePath} is not a regular file (a symlink, FIFO, device or directory); kvkeep does not use it.`);
}

/** A safe open; "not a regular file" as UNSAFE_PATH. */
async function openRegular(filePath: string, flags: number): Promise<FileHandle> {
  try {
    return await openRegularFile(filePath, flags);
  } catch (error) {
    if (errnoCode(error) === "ENOTREG") throw notRegularFile(filePath);
    throw error;
  }
}

/** `dir` is a plain directory (never a symlink): throws UNSAFE_PATH otherwise; false when missing. */
function checkPlainDir(dir: string, st: { isDirectory(): boolean } | null): boolean {
  if (st === null) return false;
  if (!st.isDirectory()) {
    throw new KvKeepError("UNSAFE_PATH", `${dir} is not a plain directory; kvkeep does not use its index log through it.`);
  }
  return true;
}

async function statIno(filePath: string): Promise<{ ino: bigint; size: number } | null> {
  try {
    const st = await fs.lstat(filePath, { bigint: true });
    if (!st.isFile()) throw notRegularFile(filePath);
    return { ino: st.ino, size: Number(st.size) };
  } catch (error) {
    if (errnoCode(error) === "ENOENT" || errnoCode(error) === "ENOTDIR") return null;
    throw error;
  }
}

export class IndexLog {
  readonly path: string;
  readonly dir: string;
  /** Identifies this store's records, so its own reads skip them. */
  readonly writerId: string;
  readonly #logger: Logger;

  #queue: string[] = [];
  #flushScheduled = false;
  #flushing: Promise<void> = Promise.resolve();
  #closed = false;
  #warnedAppend = false;

  #readIno: bigint | null = null;
  #readOffset = 0;
  /** The log's size at the last read (what compaction compares with its threshold). */
  lastSeenSize = 0;

  constructor(root: string, writerId: string, logger: Logger) {
    this.dir = internalDir(root);
    this.path = path.join(this.dir, INDEX_LOG_NAME);
    this.writerId = writerId;
    this.#logger = logger;
  }

  get lockPath(): string {
    return path.join(this.dir, INDEX_LOCK_NAME);
  }

  /** Queue one record; written in the background (after `close`, written at once). */
  append(record: LogRecord): void {
    const line = encodeRecord(record);
    if (this.#closed) {
      this.#appendOnce(line);
      return;
    }
    this.#queue.push(line);
    if (!this.#flushScheduled) {
      this.#flushScheduled = true;
      this.#flushing = this.#flushing.then(() => this.#flush());
    }
  }

  /** Resolves when every record appended so far has been written (or dropped on error). */
  flushed(): Promise<void> {
    return this.#flushing;
  }

  async #flush(): Promise<void> {
    this.#flushScheduled = false;
    const batch = this.#queue.join("");
    this.#queue = [];
    if (batch.length === 0) return;
    try {
      // Open per batch (batches run in the background, off the commit's path): every open
      // names the current log, so a compaction's replacement needs no tracking, and no fd
      // outlives the batch — a store dropped without close() leaks nothing.
      await this.#ensureDir();
      const fd = await openRegular(this.path, APPEND_FLAGS);
      try {
        await fd.write(batch);
      } finally {
        await fd.close();
      }
    } catch (error) {
      this.#appendFailed(error);
    }
  }

  /** `<root>/.kvkeep`, created if missing — never through a symlink, never the root itself. */
  async #ensureDir(): Promise<void> {
    try {
      await fs.mkdir(this.dir, { mode: PRIVATE_DIR_MODE });
    } catch (error) {
      if (errnoCode(error) !== "EEXIST") throw error;
    }
    checkPlainDir(this.dir, await fs.lstat(this.dir));
  }

  /** `<root>/.kvkeep` exists as a plain directory (false when missing; UNSAFE_PATH when a symlink or file). */
  async #dirReady(): Promise<boolean> {
    return checkPlainDir(this.dir, await fs.lstat(this.dir).catch(() => null));
  }

  /** After close: one synchronous open-write-close, so no fd outlives the store. */
  #appendOnce(line: string): void {
    try {
      checkPlainDir(this.dir, lstatSync(this.dir, { throwIfNoEntry: false }) ?? null);
      const fd = openSync(this.path, APPEND_FLAGS | SAFE_OPEN_FLAGS, 0o644);
      try {
        if (!fstatSync(fd).isFile()) throw notRegularFile(this.path);
        writeSync(fd, line);
      } finally {
        closeSync(fd);
      }
    } catch (error) {
      this.#appendFailed(error);
    }
  }

  #appendFailed(error: unknown): void {
    // Only a hint is lost: other stores see the change at their next resync.
    const level = this.#warnedAppend ? "debug" : "warn";
    this.#warnedAppend = true;
    this.#logger[level](
      logLine("could not append to the retention index log; other processes see this change at their next resync", {
        path: this.path,
        error,
      }),
    );
  }

  /** Where the log ends now: record it before a disk walk, and read from it after. */
  async position(): Promise<LogPosition> {
    if (!(await this.#dirReady())) return { ino: null, offset: 0 };
    const st = await statIno(this.path);
    return st ? { ino: st.ino, offset: st.size } : { ino: null, offset: 0 };
  }

  setReadPosition(position: LogPosition): void {
    this.#readIno = position.ino;
    this.#readOffset = position.offset;
    this.lastSeenSize = position.offset;
  }

  /** Other stores' records appended since the last read, or `replaced`. */
  async readNew(): Promise<LogRead> {
    const st = (await this.#dirReady()) ? await statIno(this.path) : null;
    if (!st) {
      // Gone (the root was cleared?): whatever was read may be stale.
      if (this.#readIno !== null) return { replaced: true };
      return { replaced: false, records: [], skipped: 0 };
    }
    this.lastSeenSize = st.size;
    if (this.#readIno !== null && st.ino !== this.#readIno) return { replaced: true };
    if (st.size < this.#readOffset) return { replaced: true };
    if (st.size === this.#readOffset) return { replaced: false, records: [], skipped: 0 };
    if (st.size - this.#readOffset > MAX_CATCH_UP_BYTES) return { replaced: true };
    let handle: FileHandle;
    try {
      handle = await openRegular(this.path, fsConstants.O_RDONLY);
    } catch (error) {
      if (errnoCode(error) === "ENOENT") return { replaced: true };
      throw error;
    }
    try {
      if ((await handle.stat({ bigint: true })).ino !== st.ino) return { replaced: true };
      const records: LogRecord[] = [];
      let skipped = 0;
      let offset = this.#readOffset;
      const end = st.size;
      let carry = Buffer.alloc(0);
      let droppingLine = false;
      while (offset + carry.length < end) {
        const want = Math.min(READ_CHUNK, end - offset - carry.length);
        const chunk = Buffer.allocUnsafe(want);
        const { bytesRead } = await handle.read(chunk, 0, want, offset + carry.length);
        if (bytesRead === 0) break;
        const data = carry.length ? Buffer.concat([carry, chunk.subarray(0, bytesRead)]) : chunk.subarray(0, bytesRead);
        const lastNewline = data.lastIndexOf(0x0a);
        if (lastNewline < 0) {
          if (data.length > MAX_LINE_BYTES) {
            // No record is this long: skip it once (its rest, up to its newline, fails to
            // parse as one line), instead of carrying it and reading it again at every read.
            offset += data.length;
            carry = Buffer.alloc(0);
            if (!droppingLine) skipped++;
            droppingLine = true;
          } else carry = Buffer.from(data);
          continue;
        }
        droppingLine = false; // (the rest of a skipped line, up to its newline, is one more line that fails to parse)
        const decoded = decodeLines(data.subarray(0, lastNewline).toString("utf8"));
        for (const record of decoded.records) if (record.w !== this.writerId) records.push(record);
        skipped += decoded.skipped;
        offset += lastNewline + 1;
        carry = Buffer.from(data.subarray(lastNewline + 1));
      }
      // A trailing partial line stays unread: its writer may still be writing it.
      this.#readIno = st.ino;
      this.#readOffset = offset;
      return { replaced: false, records, skipped };
    } finally {
      await handle.close();
    }
  }

  /**
   * Every record in the log now (any writer), without moving the read position: the hint a
   * store starts from before its walk of the root has finished. Null when there is no log,
   * or when it is larger than HINT_MAX_BYTES.
   */
  async readAll(): Promise<LogRecord[] | null> {
    let text: string;
    try {
      if (!(await this.#dirReady())) return null;
      const handle = await openRegular(this.path, fsConstants.O_RDONLY);
      try {
        const { size } = await handle.stat();
        if (size > HINT_MAX_BYTES) {
          this.#logger.debug(logLine("the index log is too large to read as a hint; waiting for the walk of the root", { path: this.path, size }));
          return null;
        }
        text = await handle.readFile("utf8");
      } finally {
        await handle.close();
      }
    } catch (error) {
      if (errnoCode(error) === "ENOENT" || errnoCode(error) === "ENOTDIR") return null;
      throw error;
    }
    // A trailing line without its newline may be mid-write: left out.
    return decodeLines(text.slice(0, text.lastIndexOf("\n") + 1)).records;
  }

  /**
   * Compaction (the caller holds the index lock): write `records` — a snapshot of the
   * caller's just refreshed index — to a temp file and rename it over the log. Appenders
   * notice the new inode at their next batch; readers see `replaced` and resync.
   */
  async replaceWith(records: Iterable<LogRecord>): Promise<void> {
    const temp = `${this.path}.compacting`;
    await this.#ensureDir();
    // A leftover of a compactor that died (or anything planted) goes; the temp is then made new.
    await fs.unlink(temp).catch(() => {});
    const handle = await openRegular(temp, fsConstants.O_WRONLY | fsConstants.O_CREAT | fsConstants.O_EXCL);
    try {
      let buffer: string[] = [];
      let length = 0;
      for (const record of records) {
        const line = encodeRecord(record);
        buffer.push(line);
        length += line.length;
        if (length >= READ_CHUNK) {
          await handle.write(buffer.join(""));
          buffer = [];
          length = 0;
        }
      }
      if (buffer.length) await handle.write(buffer.join(""));
    } catch (error) {
      await handle.close().catch(() => {});
      await fs.unlink(temp).catch(() => {});
      throw error;
    }
    await handle.close();
    await fs.rename(temp, this.path);
    const st = await statIno(this.path);
    if (st) this.setReadPosition({ ino: st.ino, offset: st.size });
  }

  /** Write what is queued. Later appends open, write and close at once. */
  async close(): Promise<void> {
    this.#closed = true;
    await this.#flushing;
    if (this.#queue.length > 0) await this.#flush();
  }
}
