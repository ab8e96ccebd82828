/**
 * Chunk GC (ARCHITECTURE.md, "Subsystems": chunk GC): which chunks no manifest references is derived from the disk
 * each time, never stored.
 *
 *   a. take the chunk gate EXCLUSIVE, note t0 = now, release;
 *   b. walk every manifest under the root (both slots) → the referenced set R;
 *   c. delete every chunk file not in R whose mtime, read under the EXCLUSIVE gate, is before
 *      t0 − margin (batches, the gate released between them); prune emptied directories.
 *
 * Why no commit loses a chunk it names. A chunked commit holds the gate SHARED from its first
 * touch/write of a chunk to its manifest install, and a touch or write leaves the chunk's
 * mtime at "now". Take a commit whose manifest names chunk X. Either it held the gate before
 * t0 — then, as (a) waited for it, its manifest was installed before t0 and (b), which lists
 * the manifests after t0, sees it (unless it was replaced or removed since: then X is
 * referenced only by later commits, covered next) — or it got the gate after t0, and then
 * X's mtime is ≥ t0 > the cutoff. The margin absorbs file-system timestamp granularity (a
 * fresh file's mtime is the kernel's coarse clock). A GC cut short by a crash deleted only
 * unreferenced chunks; nothing is fsynced.
 *
 * (b) over-approximates R on purpose: a manifest that does not parse (a newer format, a
 * half-written one) still protects every well-formed chunk id it lists, and a manifest that
 * cannot be read for another reason than "not a plain file" (EIO, EACCES) stops the GC
 * (deletes nothing) rather than guess.
 */
import { promises as fs } from "node:fs";
import { scanRoot } from "../catalog/scan.js";
import type { ChunkFiles } from "../chunkfiles/chunk-files.js";
import { type CollectOptions, collectUnreferenced, type CollectReport, listChunkFiles, removeDeadChunkTemps } from "../chunkfiles/collect.js";
import { HEX128 } from "../chunkfiles/paths.js";
import { isKvKeepError, KvKeepError } from "../errors.js";
import { type Logger, logLine } from "../logger.js";
import { MANIFEST_MAX_BYTES } from "../manifest/format.js";
import type { NativeFs } from "../native/index.js";

/** Chunks younger than t0 minus this are never collected. */
export const CHUNK_GC_MARGIN_MS = 2_000;

export interface ChunkGcDeps {
  readonly root: string;
  readonly fsBackend: NativeFs;
  readonly chunkFiles: ChunkFiles;
  readonly logger: Logger;
}

export interface ChunkGcOptions {
  /** Default CHUNK_GC_MARGIN_MS. */
  readonly marginMs?: number;
  /** Chunks deleted per hold of the gate. Default 256. */
  readonly batch?: number;
  /** Tests: awaited after t0 is noted, before the manifests are walked (a commit races here). */
  readonly afterStart?: () => Promise<void>;
  /** Tests: see CollectOptions.beforeDelete. */
  readonly beforeDelete?: CollectOptions["beforeDelete"];
}

export interface ChunkGcReport extends CollectReport {
  /** Chunk files found. */
  listed: number;
  /** Distinct chunks the manifests name. */
  referenced: number;
  /** Dead writers' chunk temps removed. */
  removedTemps: number;
}

const EMPTY: ChunkGcReport = { listed: 0, referenced: 0, removedTemps: 0, removedChunks: 0, removedBytes: 0, keptYoung: 0, removedDirs: 0 };

/** One chunk GC of the root. Resolves what it did; rejects (deleting nothing more) when a manifest could not be read. */
export async function collectChunkGarbage(deps: ChunkGcDeps, options: ChunkGcOptions = {}): Promise<ChunkGcReport> {
  // A root that never held a chunk costs one listing of an absent directory.
  const before = await listChunkFiles(deps.root);
  if (before.chunks.length === 0 && before.temps.length === 0) return { ...EMPTY };
  const t0 = await deps.chunkFiles.withCollectGate(async () => Date.now());
  await options.afterStart?.();
  const referenced = await referencedChunks(deps.root, deps.fsBackend);
  const listing = await listChunkFiles(deps.root);
  const removedTemps = await removeDeadChunkTemps(listing.temps);
  const collected = await collectUnreferenced(
    deps.chunkFiles,
    listing.chunks,
    (context, id) => referenced.has(`${context}/${id}`),
    t0 - (options.marginMs ?? CHUNK_GC_MARGIN_MS),
    { batch: options.batch, beforeDelete: options.beforeDelete },
  );
  const report: ChunkGcReport = { listed: listing.chunks.length, referenced: referenced.size, removedTemps, ...collected };
  if (report.removedChunks + report.removedTemps > 0) deps.logger.info(logLine("collected unreferenced chunks", { root: deps.root, ...report }));
  return report;
}

/**
 * Every `<context>/<id>` a manifest under the root names, in either slot. Reads each manifest
 * bounded and without following a symlink.
 */
export async function referencedChunks(root: string, fsBackend: NativeFs): Promise<Set<string>> {
  const referenced = new Set<string>();
  for await (const modelDir of scanRoot(root)) {
    const manifests = modelDir.files.filter((f) => f.kind === "manifest");
    const texts = await Promise.all(manifests.map((file) => readManifestText(file.path, fsBackend)));
    for (const text of texts) if (text !== null) addReferences(text, referenced);
  }
  return referenced;
}

async function readManifestText(file: string, fsBackend: NativeFs): Promise<string | null> {
  try {
    return (await fsBackend.readFileBounded(file, MANIFEST_MAX_BYTES))?.data.toString("utf8") ?? null;
  } catch (error) {
    // Not a plain file (a symlink, FIFO), or larger than any manifest kvkeep writes: no
    // manifest of kvkeep's, so it references nothing.
    if (isKvKeepError(error, "UNSAFE_PATH")) return null;
    const st = await fs.lstat(file).catch(() => null);
    if (st === null) return null; // gone since the listing: replaced or removed, covered by the argument above
    if (!st.isFile() || st.size > MANIFEST_MAX_BYTES) return null;
    throw new KvKeepError("IO_ERROR", `chunk GC could not read the manifest ${file}, so it cannot know which chunks are in use; it deleted nothing more. ${(error as Error).message}`, {
      cause: error,
    });
  }
}

/** Add every well-formed chunk id either slot of a manifest's JSON names (leniently: see the header). */
export function addReferences(text: string, into: Set<string>): void {
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch {
    return;
  }
  if (raw === null || typeof raw !== "object") return;
  for (const slot of [(raw as { current?: unknown }).current, (raw as { pending?: unknown }).pending]) {
    const chunks = (slot as { chunks?: { context?: unknown; ids?: unknown } } | null | undefined)?.chunks;
    if (chunks === null || typeof chunks !== "object" || typeof chunks.context !== "string" || !HEX128.test(chunks.context) || !Array.isArray(chunks.ids)) continue;
    for (const id of chunks.ids) if (typeof id === "string" && HEX128.test(id)) into.add(`${chunks.context}/${id}`);
  }
}
