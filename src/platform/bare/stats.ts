/** Node-shaped stats for the Bare build: `BigIntStats` from the addon's exact fields. */
import type { StatFields } from "./native.js";

const S_IFMT = 0o170000;
const S_IFREG = 0o100000;
const S_IFDIR = 0o040000;
const S_IFLNK = 0o120000;
const S_IFIFO = 0o010000;
const S_IFSOCK = 0o140000;
const S_IFCHR = 0o020000;
const S_IFBLK = 0o060000;

/** The fields of Node's `BigIntStats` kvkeep reads, with the same values Node gives. */
export class BigIntStats {
  readonly dev: bigint;
  readonly ino: bigint;
  readonly mode: bigint;
  readonly nlink: bigint;
  readonly uid: bigint;
  readonly gid: bigint;
  readonly rdev: bigint;
  readonly size: bigint;
  readonly blksize: bigint;
  readonly blocks: bigint;
  readonly atimeNs: bigint;
  readonly mtimeNs: bigint;
  readonly ctimeNs: bigint;
  readonly atimeMs: bigint;
  readonly mtimeMs: bigint;
  readonly ctimeMs: bigint;

  constructor(fields: StatFields) {
    const [dev, ino, mode, nlink, uid, gid, rdev, size, blksize, blocks, atimeNs, mtimeNs, ctimeNs] = fields.map((f) => BigInt(f));
    this.dev = dev!;
    this.ino = ino!;
    this.mode = mode!;
    this.nlink = nlink!;
    this.uid = uid!;
    this.gid = gid!;
    this.rdev = rdev!;
    this.size = size!;
    this.blksize = blksize!;
    this.blocks = blocks!;
    this.atimeNs = atimeNs!;
    this.mtimeNs = mtimeNs!;
    this.ctimeNs = ctimeNs!;
    // Node floors the nanoseconds to whole milliseconds for the bigint *Ms fields.
    this.atimeMs = floorDiv(atimeNs!, 1_000_000n);
    this.mtimeMs = floorDiv(mtimeNs!, 1_000_000n);
    this.ctimeMs = floorDiv(ctimeNs!, 1_000_000n);
  }

  #type(): number {
    return Number(this.mode) & S_IFMT;
  }
  isFile(): boolean {
    return this.#type() === S_IFREG;
  }
  isDirectory(): boolean {
    return this.#type() === S_IFDIR;
  }
  isSymbolicLink(): boolean {
    return this.#type() === S_IFLNK;
  }
  isFIFO(): boolean {
    return this.#type() === S_IFIFO;
  }
  isSocket(): boolean {
    return this.#type() === S_IFSOCK;
  }
  isCharacterDevice(): boolean {
    return this.#type() === S_IFCHR;
  }
  isBlockDevice(): boolean {
    return this.#type() === S_IFBLK;
  }
}

function floorDiv(a: bigint, b: bigint): bigint {
  const q = a / b;
  return a % b !== 0n && a < 0n ? q - 1n : q;
}

/** A directory entry with a known type (bare-fs reports UNKNOWN where the filesystem does). */
export class Dirent {
  readonly #type: number;

  /** `type`: the S_IFMT bits of the entry (0 when unknown). */
  constructor(
    readonly name: string,
    readonly parentPath: string,
    type: number,
  ) {
    this.#type = type;
  }

  /** Node's deprecated alias of `parentPath`. */
  get path(): string {
    return this.parentPath;
  }
  isFile(): boolean {
    return this.#type === S_IFREG;
  }
  isDirectory(): boolean {
    return this.#type === S_IFDIR;
  }
  isSymbolicLink(): boolean {
    return this.#type === S_IFLNK;
  }
}

/** S_IFMT bits for a `mode`. */
export function fileType(mode: number): number {
  return mode & S_IFMT;
}
