/**
 * `node:fs` for the Bare build: the synchronous calls and constants kvkeep uses, on bare-fs,
 * with the flags bare-fs lacks (O_EXCL, O_NOFOLLOW, O_NONBLOCK, O_SYNC, O_DSYNC,
 * O_DIRECTORY) taken from the native addon, so code that ORs them in gets the real values
 * instead of bare-fs's silent 0. `promises` is ./fs-promises.ts.
 */
import { openFlags } from "./flags.js";
import { platformBinding } from "./native.js";
import { fsBare, type BareStats } from "./runtime.js";
import * as promises from "./fs-promises.js";

export { promises };
export type { Dirent } from "./stats.js";

function bareConstant(name: string): number {
  const value = fsBare.constants[name];
  if (typeof value !== "number") throw new Error(`bare-fs defines no ${name}`);
  return value;
}

const FROM_BARE_FS = [
  "O_RDONLY",
  "O_WRONLY",
  "O_RDWR",
  "O_CREAT",
  "O_TRUNC",
  "O_APPEND",
  "S_IFMT",
  "S_IFREG",
  "S_IFDIR",
  "S_IFLNK",
  "COPYFILE_EXCL",
  "COPYFILE_FICLONE",
] as const;
const FROM_ADDON = ["O_EXCL", "O_NOFOLLOW", "O_NONBLOCK", "O_NOCTTY", "O_DIRECTORY", "O_SYNC"] as const;

type ConstantName = (typeof FROM_BARE_FS)[number] | (typeof FROM_ADDON)[number] | "O_DSYNC";

/**
 * Node's `fs.constants` for open flags and file types; the addon supplies what bare-fs lacks.
 * Getters: the addon is loaded when a flag is first read, not when this module is.
 */
export const constants = {} as Readonly<Record<ConstantName, number>>;
for (const name of FROM_BARE_FS) Object.defineProperty(constants, name, { enumerable: true, get: () => bareConstant(name) });
for (const name of FROM_ADDON) {
  Object.defineProperty(constants, name, { enumerable: true, get: () => platformBinding().platformConstants[name] });
}
Object.defineProperty(constants, "O_DSYNC", {
  enumerable: true,
  get: () => platformBinding().platformConstants.O_DSYNC ?? platformBinding().platformConstants.O_SYNC,
});
Object.freeze(constants);

export function existsSync(filePath: string): boolean {
  return fsBare.existsSync(filePath);
}

export function readFileSync(filePath: string, options: BufferEncoding | { encoding: BufferEncoding }): string;
export function readFileSync(filePath: string, options?: null): Buffer;
export function readFileSync(filePath: string, options?: BufferEncoding | { encoding: BufferEncoding } | null): string | Buffer {
  const bytes = fsBare.readFileSync(filePath);
  const buffer = Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const encoding = typeof options === "string" ? options : options?.encoding;
  return encoding ? buffer.toString(encoding) : buffer;
}

function noBigint(options: { bigint?: boolean } | undefined, call: string): void {
  if (options?.bigint) throw new Error(`${call} with { bigint: true } is not available in kvkeep's Bare build; use fs.promises.${call.replace("Sync", "")}`);
}

export function statSync(filePath: string, options?: { bigint?: false }): BareStats {
  noBigint(options, "statSync");
  return fsBare.statSync(filePath);
}

export function lstatSync(filePath: string, options?: { bigint?: false }): BareStats {
  noBigint(options, "lstatSync");
  return fsBare.lstatSync(filePath);
}

export function fstatSync(fd: number, options?: { bigint?: false }): BareStats {
  noBigint(options, "fstatSync");
  return fsBare.fstatSync(fd);
}

export function openSync(filePath: string, flags: string | number = "r", mode = 0o666): number {
  return fsBare.openSync(filePath, openFlags(flags), mode);
}

export function closeSync(fd: number): void {
  fsBare.closeSync(fd);
}

/** Writes all of `data` at the current position; returns the bytes written. */
export function writeSync(fd: number, data: string | Uint8Array): number {
  const bytes = typeof data === "string" ? Buffer.from(data, "utf8") : data;
  let written = 0;
  while (written < bytes.byteLength) written += fsBare.writeSync(fd, bytes, written, bytes.byteLength - written, -1);
  return written;
}

export function mkdirSync(dir: string, options?: { recursive?: boolean; mode?: number }): void {
  fsBare.mkdirSync(dir, { recursive: options?.recursive ?? false, mode: options?.mode ?? 0o777 });
}

export function unlinkSync(filePath: string): void {
  fsBare.unlinkSync(filePath);
}

export function renameSync(from: string, to: string): void {
  fsBare.renameSync(from, to);
}

/** The names in a directory (Node's `readdirSync(dir)` without options). */
export function readdirSync(dir: string): string[] {
  return fsBare.readdirSync(dir, { withFileTypes: true }).map((entry) => entry.name);
}
