/**
 * Chunk files: the immutable, content-addressed token chunks of chunked caches
 * (docs/chunks-format.md for the encoding, ARCHITECTURE.md, "Subsystems"), and the root's chunk gate.
 *
 *   <root>/.kvkeep/chunks/<context>/<id[0..2)>/<id>.kvkc
 *
 * A chunk is written once, durably, before any manifest names it: temp beside it (stamped
 * name, so recovery can tell a dead writer's), fsync, rename without replacing, fsync the
 * directory. Two writers of one id both succeed: the second finds the first's file
 * (TARGET_EXISTS), keeps it and touches it. The bytes under one id may differ between writers
 * (docs/chunks-format.md, "What the KV bytes depend on"): either is a valid KV of the prefix.
 *
 * Nothing here decides whether a chunk is referenced: GC (retention/chunk-gc.ts, chunkfiles/collect.ts) derives that from the
 * manifests, and relies on two things this class does — a commit holds the gate SHARED from
 * its first `touch`/`write` to its manifest install, and `touch`/`write` leave the chunk's
 * mtime at "now" (a chunk younger than GC's t0 is never collected).
 *
 * Reads never follow a symlink (O_NOFOLLOW on the file, lstat on each directory level) and
 * are bounded. What a read returns is only bytes: `readVerified` checks them (shape,
 * geometry, checksum, and the identity recomputed from the parent id and the tokens).
 */
import { promises as fs } from "node:fs";
import path from "node:path";
import {
  CHUNK_HEADER_BYTES,
  chunkByteLength,
  gatherPlan,
  geometryDigest,
  type KvGeometry,
  readChunkHeader,
  readChunkTokens,
  type StreamPlacement,
  verifyChunk,
} from "../chunks/state-format.js";
import { chunkId, type StateContext } from "../chunks/chunk-id.js";
import { isStateFormatError } from "../chunks/errors.js";
import { crashPoint } from "../durable/crash-points.js";
import { assertRealDirs, mkdirUnderRoot, removeEntry, unlinkIfExists, writeSynced } from "../durable/files.js";
import { ownTempPath } from "../durable/temp-owner.js";
import { errnoCode, fsWriteError, isKvKeepError, KvKeepError } from "../errors.js";
import type { MemoryFile, NativeFs } from "../native/index.js";
import { withChunkGate } from "./gate.js";
import { chunkDirComponents, chunkPathOf, HEX128 } from "./paths.js";

/** What `ChunkFiles.gather` assembles: a chain of full chunks from position 0, then its last piece. */
export interface ChunkChainLoad {
  readonly context: StateContext;
  /** The full chunks, in order (each `context.chunkTokens` tokens). */
  readonly ids: readonly string[];
  readonly geometry: KvGeometry;
  /** The encoded piece after them (the tail, or a chunk cut short), already checked; null for none. */
  readonly last: Uint8Array | null;
  readonly placement: StreamPlacement;
  /** Also check every chunk's XXH64 (the store's `verify: "checksum"`); else size, header and identity. */
  readonly checksums: boolean;
}

/** Far above any real chunk (256 tokens × 320 KiB of KV per token for a 70B model is 80 MiB); the addon's bound is 1 GiB. */
export const MAX_CHUNK_FILE_BYTES = 2 ** 30;

function checkHex(value: unknown, argument: string): string {
  if (typeof value !== "string" || !HEX128.test(value)) {
    throw new KvKeepError("INVALID_ARGUMENT", `${argument} must be 32 lowercase hex characters (a chunk context digest or id), got ${JSON.stringify(value)}.`, {
      argument,
    });
  }
  return value;
}

export class ChunkFiles {
  readonly root: string;
  readonly #fs: NativeFs;

  constructor(root: string, fsBackend: NativeFs) {
    this.root = path.resolve(root);
    this.#fs = fsBackend;
  }

  /** `<root>/.kvkeep/chunks/<context>/<id[0..2)>/<id>.kvkc` */
  pathOf(context: string, id: string): string {
    return chunkPathOf(this.root, checkHex(context, "context"), checkHex(id, "id"));
  }

  /** Hold the gate SHARED (a commit: from its first has/touch to its manifest install). Rejects ABORTED when `signal` aborts while waiting. */
  withCommitGate<T>(use: () => Promise<T>, signal?: AbortSignal): Promise<T> {
    return withChunkGate(this.root, this.#fs, "shared", use, signal);
  }

  /** Hold the gate EXCLUSIVE (GC: noting t0, and deleting). */
  withCollectGate<T>(use: () => Promise<T>): Promise<T> {
    return withChunkGate(this.root, this.#fs, "exclusive", use);
  }

  /**
   * Whether the chunk is on the disk (a regular file at its name, reached through real
   * directories); if so its mtime is set to now — it is about to be referenced, and GC never
   * collects a chunk touched after its t0. Call it under the commit gate.
   */
  async touch(context: string, id: string): Promise<boolean> {
    const target = this.pathOf(context, id);
    if (!(await assertRealDirs(this.root, chunkDirComponents(context, id)))) return false;
    const entry = await this.#fs.identity(target);
    if (entry?.type !== "file") return false;
    const now = new Date();
    try {
      // lutimes: the entry itself, never a symlink's target (checked above to be a file).
      await fs.lutimes(target, now, now);
      return true;
    } catch (error) {
      if (errnoCode(error) === "ENOENT") return false;
      throw fsWriteError(`touching the chunk ${target}`, error);
    }
  }

  /**
   * Write an immutable chunk durably: temp beside it, fsync, rename without replacing, fsync
   * its directory (directories it creates are synced into their parents). TARGET_EXISTS means
   * another writer won: theirs is kept and touched. Resolves the bytes written (0 when the
   * chunk was already there). Call it under the commit gate. NO_SPACE / IO_ERROR on failure,
   * with nothing left at the chunk's name.
   */
  async write(context: string, id: string, bytes: Uint8Array): Promise<number> {
    const target = this.pathOf(context, id);
    const components = chunkDirComponents(context, id);
    const dir = await mkdirUnderRoot(this.#fs, this.root, ...components);
    if (await this.touch(context, id)) return 0;
    for (let attempt = 0; ; attempt++) {
      const temp = ownTempPath(target);
      try {
        await writeSynced(temp, bytes);
        await crashPoint("chunk:after-temp-synced");
        await this.#fs.renameNoReplace(temp, target);
      } catch (error) {
        await unlinkIfExists(temp).catch(() => {});
        if (isKvKeepError(error, "TARGET_EXISTS")) {
          if (await this.touch(context, id)) return 0;
          // Something that is not a chunk file sits at the name (a symlink, a directory, a
          // FIFO planted there): it is no chunk of anyone's; replace it once.
          if (attempt === 0) {
            await removeEntry(target);
            continue;
          }
        }
        throw isKvKeepError(error) ? error : fsWriteError(`writing the chunk ${target}`, error);
      }
      break;
    }
    await crashPoint("chunk:after-rename");
    await this.#fs.fsyncDir(dir);
    return bytes.byteLength;
  }

  /**
   * One chunk's bytes, bounded, never through a symlink; null when there is none. The bytes
   * are unchecked: verify them (verifyChunk and the identity recomputed from the parent and
   * the tokens), or use readVerified. UNSAFE_PATH when a symlink or other non-file sits at
   * the chunk's name or a directory above it.
   */
  async read(context: string, id: string): Promise<Buffer | null> {
    const target = this.pathOf(context, id);
    if (!(await assertRealDirs(this.root, chunkDirComponents(context, id)))) return null;
    const read = await this.#fs.readFileBounded(target, MAX_CHUNK_FILE_BYTES);
    return read?.data ?? null;
  }

  /**
   * `read`, then check the bytes are the chunk `id` names: a whole kvkc chunk of `geometry`
   * (size, checksum) whose identity, recomputed from `parent` (null for the first chunk), its
   * tokens and the context, is `id`; with a StateContext, also a full chunk of its chunk
   * size. CHUNK_MISSING when there is no such file, CHUNK_CORRUPT when the bytes are not that
   * chunk (or something else sits at its name); other failures are IO_ERROR.
   */
  async readVerified(context: StateContext | string, id: string, parent: string | null, geometry: KvGeometry | null): Promise<Buffer> {
    const digest = typeof context === "string" ? context : context.digest;
    const target = this.pathOf(digest, id);
    if (parent !== null) checkHex(parent, "parent");
    let bytes: Buffer | null;
    try {
      bytes = await this.read(digest, id);
    } catch (error) {
      if (isKvKeepError(error, "UNSAFE_PATH")) throw corrupt(target, "it is not a plain file in plain directories", error);
      throw error;
    }
    if (bytes === null) throw missing(target);
    verifyChunkBytes(bytes, context, id, parent, geometry, target);
    return bytes;
  }

  /**
   * Assemble the state `load` names into `memory` (the engine loads it by path): one native
   * gather reads each chunk file once and copies its ranges into place — no chunk passes
   * through JavaScript. Every chunk is checked before this resolves, as `readVerified` checks
   * one (size, header, geometry, identity recomputed from the parent and its tokens; its
   * XXH64 with `checksums`). Resolves the state's token count. CHUNK_MISSING / CHUNK_CORRUPT
   * as readVerified; the memory file's bytes are then not a state (the caller drops it).
   */
  async gather(memory: MemoryFile, load: ChunkChainLoad): Promise<number> {
    const { context, ids, geometry } = load;
    const size = context.chunkTokens;
    const digest = context.digest;
    const paths = ids.map((id) => this.pathOf(digest, id));
    await this.#checkDirs(digest, ids);
    const plan = gatherPlan({
      geometry,
      files: ids.length,
      pieces: [...ids.map((_, file) => ({ file, tokenCount: size })), ...(load.last ? [{ bytes: load.last }] : [])],
      placement: load.placement,
    });
    const fileBytes = chunkByteLength(geometry, size);
    const prefixBytes = CHUNK_HEADER_BYTES + 4 * size;
    let result;
    try {
      result = await memory.gather({
        size: plan.size,
        files: paths.map((p) => ({ path: p, size: fileBytes, prefixBytes })),
        literals: plan.literals,
        runs: plan.runs,
        checksumFrom: load.checksums ? CHUNK_HEADER_BYTES : undefined,
      });
    } catch (error) {
      const code = errnoCode(error);
      const where = (error as { path?: unknown }).path;
      const target = typeof where === "string" ? where : "a chunk";
      if (code === "ENOENT") throw missing(target);
      if (code === "EWRONGSIZE") throw corrupt(target, `it is not ${fileBytes} bytes (a torn or foreign file)`, error);
      if (code === "ENOTREG" || code === "ELOOP") throw corrupt(target, "it is not a plain file in plain directories", error);
      throw error;
    }
    const expectedDigest = geometryDigest(geometry);
    ids.forEach((id, i) => {
      const prefix = result.prefixes[i]!;
      try {
        const header = readChunkHeader(prefix);
        if (header.tokenCount !== size || header.firstPosition !== i * size) {
          throw corrupt(paths[i]!, `it holds tokens ${header.firstPosition}..${header.firstPosition + header.tokenCount} where the chain needs ${i * size}..${(i + 1) * size}`);
        }
        if (header.geometryDigest !== expectedDigest) throw corrupt(paths[i]!, "it was cut from a state of another KV geometry");
        if (load.checksums && header.checksum !== null && header.checksum !== result.digests[i]) throw corrupt(paths[i]!, "its checksum does not match its bytes");
        if (chunkId(context, i === 0 ? null : ids[i - 1]!, readChunkTokens(prefix)) !== id) {
          throw corrupt(paths[i]!, "its tokens (after its parent, in its context) are not the ones its name says");
        }
      } catch (error) {
        if (isStateFormatError(error)) throw corrupt(paths[i]!, error.message, error);
        throw error;
      }
    });
    return plan.tokenCount;
  }

  /** Every directory level above the chunks is a real directory: CHUNK_MISSING when one is missing, CHUNK_CORRUPT when one is not a plain directory. */
  async #checkDirs(digest: string, ids: readonly string[]): Promise<void> {
    let present: Set<string>;
    try {
      present = await this.#fanOutsPresent(digest, ids);
    } catch (error) {
      if (isKvKeepError(error, "UNSAFE_PATH")) throw corrupt(path.join(this.root, ...chunkDirComponents(digest, ids[0]!).slice(0, -1)), "a directory on its way is not a plain directory", error);
      throw error;
    }
    const absent = ids.find((id) => !present.has(id.slice(0, 2)));
    if (absent !== undefined) throw missing(this.pathOf(digest, absent));
  }

  /**
   * The fan-out directories (of those `ids` fall in) that exist as real directories below a
   * real context directory: the levels down to the context once, then one lstat per fan-out.
   * UNSAFE_PATH when one is a symlink or a file.
   */
  async #fanOutsPresent(digest: string, ids: readonly string[]): Promise<Set<string>> {
    const present = new Set<string>();
    if (ids.length === 0) return present;
    const contextLevels = chunkDirComponents(digest, ids[0]!).slice(0, -1);
    if (!(await assertRealDirs(this.root, contextLevels))) return present;
    const contextDir = path.join(this.root, ...contextLevels);
    const fans = [...new Set(ids.map((id) => id.slice(0, 2)))];
    const there = await Promise.all(fans.map((fan) => assertRealDirs(contextDir, [fan])));
    fans.forEach((fan, i) => there[i] && present.add(fan));
    return present;
  }

  /**
   * `touch` for many chunks of one context at once (a commit names hundreds): whether each is
   * on the disk — a regular file at its name, reached through real directories — each found
   * one's mtime set to now (one native call). Call it under the commit gate.
   */
  async touchAll(context: string, ids: readonly string[]): Promise<boolean[]> {
    for (const id of ids) checkHex(id, "id");
    const present = await this.#fanOutsPresent(checkHex(context, "context"), ids);
    const candidates = ids.flatMap((id, i) => (present.has(id.slice(0, 2)) ? [i] : []));
    const touched = await this.#fs.touchFiles(candidates.map((i) => this.pathOf(context, ids[i]!)));
    const out = ids.map(() => false);
    candidates.forEach((i, k) => (out[i] = touched[k]!));
    return out;
  }

  /**
   * Remove one chunk file (GC, `verify --fix`): whatever sits at its name. Call it under the
   * collect gate, or for a chunk proven bad. True when something was removed.
   */
  async remove(context: string, id: string): Promise<boolean> {
    const target = this.pathOf(context, id);
    if (!(await assertRealDirs(this.root, chunkDirComponents(context, id)).catch(() => false))) return false;
    return removeEntry(target);
  }
}

/**
 * Check that `bytes` are the chunk `id` names: a whole kvkc chunk of `geometry` (size,
 * checksum) whose identity, recomputed from `parent`, its tokens and the context, is `id`;
 * with a StateContext, a full chunk of its size. CHUNK_CORRUPT otherwise (`where` names the
 * chunk's source in the message: its file, or the remote tier).
 */
export function verifyChunkBytes(bytes: Uint8Array, context: StateContext | string, id: string, parent: string | null, geometry: KvGeometry | null, where: string): void {
  const digest = typeof context === "string" ? context : context.digest;
  let tokens: Int32Array;
  try {
    const header = verifyChunk(bytes, geometry);
    tokens = readChunkTokens(bytes);
    if (typeof context !== "string" && header.tokenCount !== context.chunkTokens) {
      throw corrupt(where, `it holds ${header.tokenCount} tokens where a full chunk holds ${context.chunkTokens}`);
    }
    if (header.tokenCount === 0) throw corrupt(where, "it holds no tokens");
  } catch (error) {
    if (isStateFormatError(error)) throw corrupt(where, error.message, error);
    throw error;
  }
  const chunkTokens = typeof context === "string" ? tokens.length : context.chunkTokens;
  if (chunkId({ digest, chunkTokens }, parent, tokens) !== id) {
    throw corrupt(where, "its tokens (after its parent, in its context) are not the ones its name says");
  }
}

function missing(target: string): KvKeepError {
  return new KvKeepError(
    "CHUNK_MISSING",
    `the chunk ${target} is not on the disk (removed by hand, or by a GC that did not see the manifest naming it). The cache naming it is a miss: it is removed and the turn starts fresh.`,
  );
}

function corrupt(target: string, detail: string, cause?: unknown): KvKeepError {
  return new KvKeepError(
    "CHUNK_CORRUPT",
    `the chunk ${target} is not the chunk its name says: ${detail}. The cache naming it is a miss (removed, the turn starts fresh); \`kvkeep verify --fix\` removes such chunks.`,
    cause === undefined ? undefined : { cause },
  );
}
