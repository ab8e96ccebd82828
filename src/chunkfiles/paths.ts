/**
 * Where chunk files live under a cache root, and what their names prove. Pure (node:path only).
 *
 *   <root>/.kvkeep/chunks.lock                                   the chunk gate (flock: commits shared, GC exclusive)
 *   <root>/.kvkeep/chunks-gc.lock                                its turnstile (a collector waiting holds it; commits pass it)
 *   <root>/.kvkeep/chunks/<context>/<id[0..2)>/<id>.kvkc         an immutable chunk
 *   <root>/.kvkeep/chunks/<context>/<id[0..2)>/<id>.kvkc.<pid>-<stamp>-<u>.tmp   a writer's temp
 *
 * `<context>` is the state context's digest (src/chunks/chunk-id.ts), which includes the scope
 * id: two scopes never share a chunk, and no scope appears in clear. The two-character fan-out
 * keeps directories small (a 2 M-token root holds ~8 000 chunks per context).
 */
import path from "node:path";
import { INTERNAL_DIR_NAME } from "../keys/safe-key.js";

export const CHUNKS_DIR_NAME = "chunks";
export const CHUNK_FILE_SUFFIX = ".kvkc";
export const CHUNK_GATE_LOCK_NAME = "chunks.lock";
export const CHUNK_TURNSTILE_LOCK_NAME = "chunks-gc.lock";

/** A context digest or a chunk id: 32 lowercase hex characters (128 bits). */
export const HEX128 = /^[0-9a-f]{32}$/;
/** A fan-out directory: the first two characters of the ids in it. */
export const FAN_OUT = /^[0-9a-f]{2}$/;
/** `<id>.kvkc` */
const CHUNK_FILE = /^([0-9a-f]{32})\.kvkc$/;
/** `<id>.kvkc.<pid>-[<stamp>-]<unique>.tmp` (tempPathFor beside a chunk). */
const CHUNK_TEMP = /^([0-9a-f]{32})\.kvkc\.\d+-(?:[0-9a-z]+-)?[0-9a-z]+\.tmp$/;

/** `<root>/.kvkeep/chunks` */
export function chunksDir(root: string): string {
  return path.join(root, INTERNAL_DIR_NAME, CHUNKS_DIR_NAME);
}

/** `<root>/.kvkeep/chunks.lock` */
export function chunkGateLockPath(root: string): string {
  return path.join(root, INTERNAL_DIR_NAME, CHUNK_GATE_LOCK_NAME);
}

/** `<root>/.kvkeep/chunks-gc.lock` */
export function chunkTurnstileLockPath(root: string): string {
  return path.join(root, INTERNAL_DIR_NAME, CHUNK_TURNSTILE_LOCK_NAME);
}

/** The directory levels from the root to a chunk's fan-out directory. */
export function chunkDirComponents(context: string, id: string): string[] {
  return [INTERNAL_DIR_NAME, CHUNKS_DIR_NAME, context, id.slice(0, 2)];
}

export function chunkPathOf(root: string, context: string, id: string): string {
  return path.join(root, ...chunkDirComponents(context, id), id + CHUNK_FILE_SUFFIX);
}

/** The id a chunk file's name says, or null when the name is not one kvkeep gives a chunk. */
export function chunkIdOfFileName(fileName: string): string | null {
  return CHUNK_FILE.exec(fileName)?.[1] ?? null;
}

/**
 * Whether a name is one kvkeep gives a chunk's temp (the writer's liveness is decided by
 * durable/temp-owner.ts). A user's `notes.kvkc.1-a.tmp` does not fit: the id must be 32 hex.
 */
export function isChunkTempName(fileName: string): boolean {
  return CHUNK_TEMP.test(fileName);
}
