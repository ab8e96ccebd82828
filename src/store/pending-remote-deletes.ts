/**
 * Remote deletes the tier has not taken yet, kept under the root:
 * `<root>/.kvkeep/remote-deletes.json`. A delete made while Redis is down must not be undone
 * when Redis comes back from a snapshot holding the state — by the store that deleted it, by
 * any other store on the root, or by the next store after that one closed or was killed —
 * so the list lives on disk, not in one store's memory: every store on the root reads it
 * before it reads from the tier, and any of them sends what it holds.
 *
 * `{"format":1,"deletes":[{"id":"<16 hex>","target":{"all":true}|{"scopeId":null|"<32 hex>","kvCacheKey":"…","modelId":"…"}}]}`,
 * oldest first, rewritten whole (temp, fsync, rename, directory fsync) under
 * `remote-deletes.lock`; a delete of everything replaces every earlier entry. Readers stat
 * it and re-read only when it changed. Sending is one store at a time on the root
 * (`remote-deletes.send.lock`, in remote-sync.ts), each re-reading the list under that lock,
 * so a delete is not sent twice at two generations (a late second tombstone would remove an
 * upload made in between).
 *
 * The file is trusted as everything under the root is: a root must be writable only by the
 * users whose caches it holds (a planted entry would make a store delete remote copies).
 * Entries are parsed strictly; a garbled file counts as empty and is logged. A key's delete
 * names its isolation scope by id (`scopeId`, null for the shared space; never the scope
 * itself): it covers that scope's copies only, never the same key in another scope, and an
 * entry without a well-formed `scopeId` is dropped rather than guessed at.
 */
import { randomBytes } from "node:crypto";
import { promises as fs } from "node:fs";
import path from "node:path";
import { PRIVATE_DIR_MODE, writeFileAtomic } from "../durable/files.js";
import { errnoCode, fsWriteError, KvKeepError } from "../errors.js";
import { assertCacheKey, assertModelId } from "../keys/safe-key.js";
import { SCOPE_ID_PATTERN } from "../keys/scope.js";
import { internalDir } from "../layout/paths.js";
import { type Logger, logLine } from "../logger.js";
import type { NativeFs } from "../native/index.js";

export const PENDING_DELETES_NAME = "remote-deletes.json";
const FORMAT = 1;
/** Larger than any list kvkeep writes in practice (an entry is ~100 bytes; `all` collapses the list). */
const MAX_FILE_BYTES = 4 * 1024 * 1024;

/**
 * A delete as the store hands it to the remote side: everything, or a key (every model, or
 * one) of one scope — its id, null for the shared space (the public `DeleteTarget` names the
 * scope itself, which is never written down).
 */
export type SyncDeleteTarget = { all: true } | { scopeId: string | null; kvCacheKey: string; modelId?: string | undefined };

export interface PendingDelete {
  /** Names this entry in the file, so the store that sends it removes exactly it. */
  readonly id: string;
  readonly target: SyncDeleteTarget;
}

function parseTarget(value: unknown): SyncDeleteTarget | null {
  const t = value as { all?: unknown; scopeId?: unknown; kvCacheKey?: unknown; modelId?: unknown } | null;
  if (!t || typeof t !== "object") return null;
  if (t.all === true) return { all: true };
  // The scope must be said: a key's delete without it could be taken for the shared space's.
  if (!(t.scopeId === null || (typeof t.scopeId === "string" && SCOPE_ID_PATTERN.test(t.scopeId)))) return null;
  try {
    assertCacheKey(t.kvCacheKey);
    if (t.modelId !== undefined) assertModelId(t.modelId);
  } catch {
    return null;
  }
  return { scopeId: t.scopeId, kvCacheKey: t.kvCacheKey, ...(t.modelId !== undefined ? { modelId: t.modelId as string } : {}) };
}

/** A target as the file holds it: a key's always with its `scopeId` (null included), no undefined fields. */
function targetJson(target: SyncDeleteTarget): SyncDeleteTarget {
  if ("all" in target) return { all: true };
  return { scopeId: target.scopeId, kvCacheKey: target.kvCacheKey, ...(target.modelId !== undefined ? { modelId: target.modelId } : {}) };
}

/** The entries of the file's text; null when it is not this format at all. */
export function parsePendingDeletes(text: string): PendingDelete[] | null {
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch {
    return null;
  }
  const file = raw as { format?: unknown; deletes?: unknown } | null;
  if (!file || typeof file !== "object" || file.format !== FORMAT || !Array.isArray(file.deletes)) return null;
  const out: PendingDelete[] = [];
  for (const entry of file.deletes as Array<{ id?: unknown; target?: unknown } | null>) {
    const target = parseTarget(entry?.target);
    if (target && typeof entry?.id === "string" && /^[0-9a-f]{16}$/.test(entry.id)) out.push({ id: entry.id, target });
  }
  return out;
}

function serialize(deletes: readonly PendingDelete[]): string {
  return `${JSON.stringify({ format: FORMAT, deletes: deletes.map((d) => ({ id: d.id, target: targetJson(d.target) })) })}\n`;
}

export class PendingRemoteDeletes {
  readonly path: string;
  readonly #dir: string;
  readonly #root: string;
  readonly #fsBackend: NativeFs;
  readonly #logger: Logger;
  /** The file as last read: its identity, and its entries. */
  #cached: { key: string; deletes: PendingDelete[] } | null = null;
  #warnedGarbled = false;

  constructor(root: string, fsBackend: NativeFs, logger: Logger) {
    this.#root = root;
    this.#dir = internalDir(root);
    this.path = path.join(this.#dir, PENDING_DELETES_NAME);
    this.#fsBackend = fsBackend;
    this.#logger = logger;
  }

  /** The entries as the file has them now (one stat when it did not change). Throws on an unreadable file. */
  async read(): Promise<PendingDelete[]> {
    const entry = await this.#fsBackend.identity(this.path);
    if (entry === null) {
      this.#cached = null;
      return [];
    }
    const key = `${entry.type}:${entry.ino}:${entry.size}:${entry.mtimeNs}`;
    if (this.#cached?.key === key) return this.#cached.deletes;
    const read = await this.#fsBackend.readFileBounded(this.path, MAX_FILE_BYTES);
    if (read === null) return [];
    const deletes = parsePendingDeletes(read.data.toString("utf8"));
    if (deletes === null && !this.#warnedGarbled) {
      this.#warnedGarbled = true;
      this.#logger.warn(logLine("the list of pending remote deletes is not one kvkeep wrote; ignoring it", { path: this.path }));
    }
    const { identity } = read;
    this.#cached = { key: `${identity.type}:${identity.ino}:${identity.size}:${identity.mtimeNs}`, deletes: deletes ?? [] };
    return this.#cached.deletes;
  }

  /** A new entry's id. */
  static newId(): string {
    return randomBytes(8).toString("hex");
  }

  /** Keep `entry` (before its first attempt); resolves once it is on disk. A delete of everything replaces every earlier entry. */
  async add(entry: PendingDelete): Promise<void> {
    await this.#update((deletes) => ("all" in entry.target ? [entry] : [...deletes, entry]));
  }

  /** Forget the entry the tier took. */
  async remove(id: string): Promise<void> {
    await this.#update((deletes) => deletes.filter((d) => d.id !== id));
  }

  async #update(change: (deletes: PendingDelete[]) => PendingDelete[]): Promise<void> {
    await this.#ensureDir();
    const lock = await this.#fsBackend.lockFile(path.join(this.#dir, "remote-deletes.lock"), "exclusive", { under: this.#root });
    try {
      const before = await this.read().catch(() => []);
      const after = change(before);
      if (after.length === 0) {
        await fs.unlink(this.path).catch((error: unknown) => {
          if (errnoCode(error) !== "ENOENT") throw error;
        });
      } else {
        await writeFileAtomic(this.#fsBackend, this.path, serialize(after), { syncDir: true });
      }
      this.#cached = null;
    } catch (error) {
      throw error instanceof KvKeepError ? error : fsWriteError(`recording pending remote deletes in ${this.path}`, error);
    } finally {
      lock.release();
    }
  }

  /** `<root>/.kvkeep`, created if missing — never through a symlink. */
  async #ensureDir(): Promise<void> {
    try {
      await fs.mkdir(this.#dir, { mode: PRIVATE_DIR_MODE });
    } catch (error) {
      if (errnoCode(error) !== "EEXIST") throw error;
    }
    if (!(await fs.lstat(this.#dir)).isDirectory()) {
      throw new KvKeepError("UNSAFE_PATH", `${this.#dir} is not a plain directory; kvkeep does not keep pending remote deletes through it.`);
    }
  }
}
