/**
 * A small file kvkeep keeps for a program built on the store, in the root's own directory:
 * `<root>/.kvkeep/<dir>/<name>` (`kvkeep chat`'s transcripts: `.kvkeep/chat/<id>.json`). The
 * program gets the store's care for its own files without reaching below the facade (the CLI
 * imports neither durable/ nor native/): the directories made one level at a time and never
 * through a symlink (mode 0700), writes atomic and durable (temp, fsync, rename, fsync of the
 * directory), reads without following a symlink and bounded in size, and a cross-process lock
 * beside the file (the native addon's flock; with the JS fallback it does not reach other
 * processes).
 */
import path from "node:path";
import { mkdirUnderRoot, unlinkIfExists, writeFileAtomic } from "../durable/files.js";
import { INTERNAL_DIR_NAME } from "../keys/safe-key.js";
import type { Logger } from "../logger.js";
import { type LockHandle, loadNativeFs, type NativeFs } from "../native/index.js";

export class OwnFile {
  /** `<root>/.kvkeep/<dir>/<name>`. */
  readonly path: string;
  readonly #root: string;
  readonly #dir: string;
  readonly #lockPath: string;
  readonly #fsBackend: NativeFs;
  #lock: LockHandle | null = null;

  /** `dir` and `name` are single path components the caller chose (never a user's text). */
  constructor(root: string, dir: string, name: string, logger?: Logger) {
    this.#root = root;
    this.#dir = dir;
    this.path = path.join(root, INTERNAL_DIR_NAME, dir, name);
    this.#lockPath = `${this.path.replace(/\.[^./]*$/, "")}.lock`;
    this.#fsBackend = loadNativeFs(logger);
  }

  /**
   * Take the file's exclusive lock, without waiting, until `release`: false when another
   * holder (this process or another) has it. The lock file stays for the next holder.
   */
  async tryLock(): Promise<boolean> {
    await mkdirUnderRoot(this.#fsBackend, this.#root, INTERNAL_DIR_NAME, this.#dir);
    const handle = this.#fsBackend.tryLockFile(this.#lockPath, "exclusive", { under: this.#root });
    if (handle === null) return false;
    this.#lock = handle;
    return true;
  }

  release(): void {
    this.#lock?.release();
    this.#lock = null;
  }

  /**
   * The file's bytes, or null when there is none. A symlink, FIFO, device or directory there
   * is UNSAFE_PATH, a file over `maxBytes` IO_ERROR (KvKeepErrors whose message says which).
   */
  async read(maxBytes: number): Promise<Buffer | null> {
    const read = await this.#fsBackend.readFileBounded(this.path, maxBytes);
    return read === null ? null : read.data;
  }

  /** Replace the file, atomically and durably. */
  async write(data: string | Uint8Array): Promise<void> {
    await mkdirUnderRoot(this.#fsBackend, this.#root, INTERNAL_DIR_NAME, this.#dir);
    await writeFileAtomic(this.#fsBackend, this.path, data, { syncDir: true });
  }

  /** Remove the file, durably (its directory fsynced) when there was one. */
  async remove(): Promise<void> {
    if (await unlinkIfExists(this.path)) await this.#fsBackend.fsyncDir(path.dirname(this.path));
  }
}
