/**
 * Opening a file kvkeep did not necessarily create, in JS (the fallback backend, and the
 * index log, which needs an fd for appends and positioned reads): the flags the addon uses,
 * and a check on the opened descriptor that it is a regular file.
 */
import { constants as fsConstants } from "node:fs";
import { type FileHandle, open } from "node:fs/promises";

/**
 * Never through a symlink at the last component (ELOOP), never blocking (a FIFO opens at
 * once — ENXIO for a writer without a reader — instead of parking a libuv thread), no
 * controlling terminal. 0 for a flag a platform lacks (Windows).
 */
export const SAFE_OPEN_FLAGS = (fsConstants.O_NOFOLLOW ?? 0) | (fsConstants.O_NONBLOCK ?? 0) | (fsConstants.O_NOCTTY ?? 0);

/** The error for "not a regular file", shaped like the addon's (code ENOTREG). */
export function notRegularFileError(filePath: string): Error {
  return Object.assign(new Error(`ENOTREG: not a regular file, open '${filePath}'`), { code: "ENOTREG" });
}

/** Open with SAFE_OPEN_FLAGS | `flags` and check with fstat that a regular file was opened (ENOTREG otherwise). */
export async function openRegularFile(filePath: string, flags: number = fsConstants.O_RDONLY, mode = 0o644): Promise<FileHandle> {
  const handle = await open(filePath, flags | SAFE_OPEN_FLAGS, mode);
  try {
    if (!(await handle.stat()).isFile()) throw notRegularFileError(filePath);
  } catch (error) {
    await handle.close();
    throw error;
  }
  return handle;
}
