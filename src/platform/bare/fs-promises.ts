/**
 * `node:fs/promises` for the Bare build: the calls kvkeep makes, with Node's semantics, on
 * bare-fs plus the native addon for what bare-fs lacks (exclusive and no-follow opens,
 * `{ bigint: true }` stats with nanosecond times, the first directory a recursive mkdir
 * created, entry types on filesystems that do not report them).
 */
import path from "node:path";
import { platformBinding } from "./native.js";
import { openFlags } from "./flags.js";
import { fsBare, type BareStats } from "./runtime.js";
import { BigIntStats, Dirent, fileType } from "./stats.js";

export type { BigIntStats, Dirent };
export type Stats = BareStats;

interface StatOptions {
  bigint?: boolean;
}

export function stat(filePath: string, options: StatOptions & { bigint: true }): Promise<BigIntStats>;
export function stat(filePath: string, options?: StatOptions): Promise<BareStats>;
export async function stat(filePath: string, options?: StatOptions): Promise<BareStats | BigIntStats> {
  if (options?.bigint) return new BigIntStats(await platformBinding().statNs(filePath, true));
  return fsBare.stat(filePath);
}

export function lstat(filePath: string, options: StatOptions & { bigint: true }): Promise<BigIntStats>;
export function lstat(filePath: string, options?: StatOptions): Promise<BareStats>;
export async function lstat(filePath: string, options?: StatOptions): Promise<BareStats | BigIntStats> {
  if (options?.bigint) return new BigIntStats(await platformBinding().statNs(filePath, false));
  return fsBare.lstat(filePath);
}

function toBytes(data: string | Uint8Array, encoding: BufferEncoding = "utf8"): Uint8Array {
  return typeof data === "string" ? Buffer.from(data, encoding) : data;
}

/** Node's FileHandle, for the methods kvkeep calls. */
export class FileHandle {
  #fd: number;

  constructor(fd: number) {
    this.#fd = fd;
  }

  get fd(): number {
    return this.#fd;
  }

  async read<T extends Uint8Array>(
    buffer: T,
    offset = 0,
    length: number = buffer.byteLength - offset,
    position: number | null = null,
  ): Promise<{ bytesRead: number; buffer: T }> {
    const bytesRead = await fsBare.read(this.#fd, buffer, offset, length, position ?? -1);
    return { bytesRead, buffer };
  }

  /** Writes all of `data` (Node's `write` may return short; kvkeep never relies on that). */
  async write(data: string | Uint8Array): Promise<{ bytesWritten: number }> {
    const bytes = toBytes(data);
    let written = 0;
    while (written < bytes.byteLength) {
      written += await fsBare.write(this.#fd, bytes, written, bytes.byteLength - written, -1);
    }
    return { bytesWritten: written };
  }

  async writeFile(data: string | Uint8Array, encoding?: BufferEncoding | { encoding?: BufferEncoding }): Promise<void> {
    const enc = typeof encoding === "string" ? encoding : encoding?.encoding;
    await this.write(toBytes(data, enc ?? "utf8"));
  }

  /** The rest of the file from the current position, as Node's `FileHandle.readFile`. */
  readFile(encoding: BufferEncoding | { encoding: BufferEncoding }): Promise<string>;
  readFile(options?: null): Promise<Buffer>;
  async readFile(options?: Encoding): Promise<string | Buffer> {
    const chunks: Buffer[] = [];
    for (;;) {
      const chunk = Buffer.alloc(64 * 1024);
      const bytesRead = await fsBare.read(this.#fd, chunk, 0, chunk.byteLength, -1);
      if (bytesRead === 0) break;
      chunks.push(chunk.subarray(0, bytesRead));
    }
    const all = Buffer.concat(chunks);
    const encoding = encodingOf(options);
    return encoding ? all.toString(encoding) : all;
  }

  async sync(): Promise<void> {
    await fsBare.fsync(this.#fd);
  }

  stat(options: StatOptions & { bigint: true }): Promise<BigIntStats>;
  stat(options?: StatOptions): Promise<BareStats>;
  async stat(options?: StatOptions): Promise<BareStats | BigIntStats> {
    if (options?.bigint) return new BigIntStats(await platformBinding().fstatNs(this.#fd));
    return fsBare.fstat(this.#fd);
  }

  async close(): Promise<void> {
    if (this.#fd < 0) return;
    const fd = this.#fd;
    this.#fd = -1;
    await fsBare.close(fd);
  }
}

export async function open(filePath: string, flags: string | number = "r", mode = 0o666): Promise<FileHandle> {
  return new FileHandle(await fsBare.open(filePath, openFlags(flags), mode));
}

type Encoding = BufferEncoding | { encoding?: BufferEncoding | null } | null | undefined;

function encodingOf(options: Encoding): BufferEncoding | null {
  if (typeof options === "string") return options;
  return options?.encoding ?? null;
}

export function readFile(filePath: string, options: BufferEncoding | { encoding: BufferEncoding }): Promise<string>;
export function readFile(filePath: string, options?: Encoding): Promise<string | Buffer>;
export async function readFile(filePath: string, options?: Encoding): Promise<string | Buffer> {
  const bytes = await fsBare.readFile(filePath);
  const buffer = Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const encoding = encodingOf(options);
  return encoding ? buffer.toString(encoding) : buffer;
}

export function readdir(dir: string, options: { withFileTypes: true }): Promise<Dirent[]>;
export function readdir(dir: string, options?: { withFileTypes?: false }): Promise<string[]>;
export async function readdir(dir: string, options?: { withFileTypes?: boolean }): Promise<string[] | Dirent[]> {
  const entries = await fsBare.readdir(dir, { withFileTypes: true });
  if (!options?.withFileTypes) return entries.map((e) => e.name);
  return Promise.all(
    entries.map(async (entry) => {
      const known = entry.isFile() ? 0o100000 : entry.isDirectory() ? 0o040000 : entry.isSymbolicLink() ? 0o120000 : -1;
      if (known >= 0) return new Dirent(entry.name, dir, known);
      // Unknown or another type: ask the filesystem, as Node does.
      const st = await fsBare.lstat(path.join(dir, entry.name)).catch(() => null);
      return new Dirent(entry.name, dir, st ? fileType(st.mode) : 0);
    }),
  );
}

/** The nearest ancestor of `target` (itself included) that does not exist, walking up. */
async function firstMissing(target: string): Promise<string | undefined> {
  let missing: string | undefined;
  let current = path.resolve(target);
  for (;;) {
    try {
      await fsBare.stat(current);
      return missing;
    } catch (error) {
      if ((error as { code?: unknown }).code !== "ENOENT") return missing;
    }
    missing = current;
    const parent = path.dirname(current);
    if (parent === current) return missing;
    current = parent;
  }
}

/** Node's mkdir: with `recursive`, resolves to the first directory it created (or undefined). */
export async function mkdir(dir: string, options?: { recursive?: boolean; mode?: number }): Promise<string | undefined> {
  const mode = options?.mode ?? 0o777;
  if (!options?.recursive) {
    await fsBare.mkdir(dir, { recursive: false, mode });
    return undefined;
  }
  const first = await firstMissing(dir);
  await fsBare.mkdir(dir, { recursive: true, mode });
  return first;
}

export function rename(from: string, to: string): Promise<void> {
  return fsBare.rename(from, to);
}

/** Node's copyFile; `mode` takes COPYFILE_EXCL / COPYFILE_FICLONE (libuv tries a reflink, then copy_file_range). */
export function copyFile(from: string, to: string, mode = 0): Promise<void> {
  return fsBare.copyFile(from, to, mode);
}

export function link(from: string, to: string): Promise<void> {
  return fsBare.link(from, to);
}

export function symlink(target: string, linkPath: string): Promise<void> {
  return fsBare.symlink(target, linkPath);
}

export function unlink(filePath: string): Promise<void> {
  return fsBare.unlink(filePath);
}

export function rmdir(dir: string): Promise<void> {
  return fsBare.rmdir(dir);
}

export function rm(target: string, options?: { recursive?: boolean; force?: boolean }): Promise<void> {
  return fsBare.rm(target, { recursive: options?.recursive ?? false, force: options?.force ?? false });
}

function seconds(time: number | Date): number {
  return typeof time === "number" ? time : time.getTime() / 1000;
}

export function lutimes(filePath: string, atime: number | Date, mtime: number | Date): Promise<void> {
  return fsBare.lutimes(filePath, seconds(atime), seconds(mtime));
}

export function utimes(filePath: string, atime: number | Date, mtime: number | Date): Promise<void> {
  return fsBare.utimes(filePath, seconds(atime), seconds(mtime));
}
