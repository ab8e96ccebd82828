/**
 * A chunked cache written the way a chunked commit writes one (ARCHITECTURE.md, "Commit protocol"), with the
 * manifest layer's own writers, before the session's chunked commit exists: under the commit
 * gate, every full chunk touched or written, then the tail as the `.bin` and a manifest whose
 * entry names the chunks.
 */
import path from "node:path";
import { ChunkFiles } from "../../src/chunkfiles/chunk-files.js";
import { encodeKvGeometry } from "../../src/chunks/state-format.js";
import { mkdirUnderRoot, statIdentity, writeFileAtomic } from "../../src/durable/files.js";
import { cacheDirComponents, type CacheLocation, cachePathOf, manifestPathOf } from "../../src/layout/paths.js";
import { type ChunkedState, MANIFEST_FORMAT, serializeManifest } from "../../src/manifest/format.js";
import { loadNativeFs } from "../../src/native/index.js";
import type { Conversation } from "./conversation.js";

export interface Planted {
  cachePath: string;
  /** Chunk bytes this commit wrote (0 for chunks that were there). */
  written: number;
}

export function chunkedStateOf(c: Conversation): ChunkedState {
  return {
    context: c.context.digest,
    geometry: encodeKvGeometry(c.geometry).toString("base64"),
    placement: { nStream: 1, streamIndex: 0, seqId: 0 },
    chunkTokens: c.context.chunkTokens,
    ids: c.ids,
    tokens: c.tokenCount,
  };
}

export async function plantChunkedCache(
  root: string,
  loc: Partial<CacheLocation> & { cacheKey: string },
  c: Conversation,
  options: { kind?: "named" | "auto"; files?: ChunkFiles; beforeInstall?: () => Promise<void> } = {},
): Promise<Planted> {
  const fsBackend = loadNativeFs();
  const files = options.files ?? new ChunkFiles(root, fsBackend);
  const full: CacheLocation = { scopeId: loc.scopeId ?? null, cacheKey: loc.cacheKey, modelId: loc.modelId ?? "m", configHash: loc.configHash ?? "c" };
  const cachePath = cachePathOf(root, full);
  let written = 0;
  await files.withCommitGate(async () => {
    for (let i = 0; i < c.ids.length; i++) {
      if (!(await files.touch(c.context.digest, c.ids[i]!))) written += await files.write(c.context.digest, c.ids[i]!, c.chunks[i]!);
    }
    await options.beforeInstall?.();
    await mkdirUnderRoot(fsBackend, root, ...cacheDirComponents(full));
    await writeFileAtomic(fsBackend, cachePath, c.tail, { syncDir: false });
    const identity = (await statIdentity(cachePath))!;
    const manifest = serializeManifest({
      format: MANIFEST_FORMAT,
      kind: options.kind ?? "named",
      ...(full.scopeId === null ? {} : { scope: full.scopeId }),
      modelId: full.modelId,
      fingerprint: null,
      configHash: full.configHash,
      cacheKey: full.cacheKey,
      current: {
        ...identity,
        xxh64: await fsBackend.xxh64File(cachePath),
        messageCount: 2,
        tokenCount: c.tokenCount,
        committedAt: Date.now(),
        chain: null,
        chunks: chunkedStateOf(c),
      },
      pending: null,
    });
    await writeFileAtomic(fsBackend, manifestPathOf(cachePath), manifest, { syncDir: true });
  });
  return { cachePath, written };
}

/** Every chunk file's path under the root's chunk directory. */
export function chunkPath(root: string, context: string, id: string): string {
  return path.join(root, ".kvkeep", "chunks", context, id.slice(0, 2), `${id}.kvkc`);
}
