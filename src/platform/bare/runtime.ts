/**
 * The Bare runtime as the Bare build of kvkeep sees it: the `Bare` global and the bare-*
 * packages, typed to the calls kvkeep makes (each checked against the installed versions;
 * see QVAC-FACTS.md). Imported only by src/platform/bare/, which the Bare build substitutes
 * for Node's builtins — Node's build never loads this.
 */
import bareFs from "bare-fs";
import bareOs from "bare-os";
import { assertSupportedBare } from "./version.js";

interface BareGlobal {
  readonly pid: number;
  readonly platform: string;
  readonly arch: string;
  readonly version: string;
  readonly Addon: { load(url: URL): { readonly exports: unknown } };
}

/** The `Bare` global; an error outside Bare (this module is only bundled for Bare). */
export function bareGlobal(): BareGlobal {
  const bare = (globalThis as { Bare?: BareGlobal }).Bare;
  if (!bare) throw new Error("kvkeep's Bare build was loaded outside the Bare runtime; Node resolves the package's Node build.");
  return bare;
}

// At import: every kvkeep module under Bare reaches the runtime through this one, so an
// unsupported Bare fails `import "kvkeep"` with RUNTIME_UNSUPPORTED before anything runs.
assertSupportedBare(bareGlobal().version);

/** bare-fs's Stats (numbers, milliseconds). */
export interface BareStats {
  dev: number;
  ino: number;
  mode: number;
  nlink: number;
  size: number;
  atimeMs: number;
  mtimeMs: number;
  ctimeMs: number;
  isFile(): boolean;
  isDirectory(): boolean;
  isSymbolicLink(): boolean;
}

/** bare-fs's Dirent. `type` is UV_DIRENT_UNKNOWN on filesystems that do not report it. */
export interface BareDirent {
  readonly name: string;
  readonly parentPath: string;
  readonly type: number;
  isFile(): boolean;
  isDirectory(): boolean;
  isSymbolicLink(): boolean;
}

/**
 * The part of bare-fs 4.8 kvkeep uses. Its `open` takes numeric flags as given (its string
 * flags lose O_EXCL/O_SYNC, which it does not define); `read`/`write` take -1 for "the
 * current position"; `mkdir` with `recursive` returns nothing.
 */
export interface BareFs {
  readonly constants: Readonly<Record<string, number | undefined>>;
  open(path: string, flags: number, mode?: number): Promise<number>;
  openSync(path: string, flags: number, mode?: number): number;
  close(fd: number): Promise<void>;
  closeSync(fd: number): void;
  read(fd: number, buffer: Uint8Array, offset: number, length: number, position: number): Promise<number>;
  write(fd: number, data: Uint8Array, offset: number, length: number, position: number): Promise<number>;
  writeSync(fd: number, data: Uint8Array, offset: number, length: number, position: number): number;
  fsync(fd: number): Promise<void>;
  fstat(fd: number): Promise<BareStats>;
  fstatSync(fd: number): BareStats;
  stat(path: string): Promise<BareStats>;
  lstat(path: string): Promise<BareStats>;
  statSync(path: string): BareStats;
  lstatSync(path: string): BareStats;
  existsSync(path: string): boolean;
  readFile(path: string): Promise<Uint8Array>;
  readFileSync(path: string): Uint8Array;
  readdir(path: string, options: { withFileTypes: true }): Promise<BareDirent[]>;
  readdirSync(path: string, options: { withFileTypes: true }): BareDirent[];
  mkdir(path: string, options: { recursive: boolean; mode: number }): Promise<void>;
  mkdirSync(path: string, options: { recursive: boolean; mode: number }): void;
  rename(from: string, to: string): Promise<void>;
  renameSync(from: string, to: string): void;
  link(from: string, to: string): Promise<void>;
  copyFile(from: string, to: string, mode: number): Promise<void>;
  symlink(target: string, linkPath: string): Promise<void>;
  unlink(path: string): Promise<void>;
  unlinkSync(path: string): void;
  rmdir(path: string): Promise<void>;
  rm(path: string, options: { recursive?: boolean; force?: boolean }): Promise<void>;
  utimes(path: string, atimeSeconds: number, mtimeSeconds: number): Promise<void>;
  lutimes(path: string, atimeSeconds: number, mtimeSeconds: number): Promise<void>;
}

export const fsBare = bareFs as unknown as BareFs;

/** The part of bare-os kvkeep uses. */
export interface BareOs {
  pid(): number;
  cwd(): string;
  homedir(): string;
  tmpdir(): string;
  availableParallelism(): number;
  /** Throws an error with `code` ESRCH/EPERM, like Node's process.kill. */
  kill(pid: number, signal?: number | string): void;
}

export const osBare = bareOs as unknown as BareOs;
