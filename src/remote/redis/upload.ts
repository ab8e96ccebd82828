/**
 * Uploading to the Redis tier: a commit reserves its generation when it happens (the
 * fleet's order), and its state is uploaded later from the write-behind queue. Chunks go
 * into the upload's own data key (content-addressed by the state's XXH64, tagged with its
 * generation), then one script publishes the record — only if no delete and no newer
 * commit came first, and only with every chunk present. A writer killed mid-upload leaves a
 * data key nobody references, which expires. Last, the state is filed in its scope's prefix
 * index.
 */
import type { FileHandle } from "node:fs/promises";
import { crashPoint } from "../../durable/crash-points.js";
import { createXxh64, hashReady } from "../../keys/hash.js";
import { logLine } from "../../logger.js";
import type { GuardFailure, Guarded } from "../guard.js";
import { CHUNKED_RECORD_FORMAT, chunkCount, chunkLength, RECORD_FORMAT, type RemoteRecord, serializeRecord } from "../record.js";
import type { RemoteCacheId, RemoteState, ReserveOutcome, UploadOutcome, UploadTicket } from "../types.js";
import { assertCacheId, invalidArgument } from "./arguments.js";
import { failureReason, PIPELINE_DEPTH, type RedisCalls } from "./calls.js";
import { asText } from "./connections.js";
import { scopeTag } from "./keys.js";
import { DROP_IF_GENERATION, INDEX_PREFIXES, PUBLISH } from "./scripts.js";

/** An upload's data key lives this long until its record is published (a killed writer's expires). */
export const PENDING_TTL_SECONDS = 3600;

type UploadFailure = Extract<UploadOutcome, { outcome: "unavailable" | "failed" }>;

/** A failed call as the upload's outcome: `failed` when the server refused it, else `unavailable`. */
function uploadFailure(attempt: GuardFailure, what: string): UploadFailure {
  return { outcome: attempt.reason === "error" ? "failed" : "unavailable", reason: failureReason(attempt, what) };
}

export class Uploader {
  readonly #calls: RedisCalls;

  constructor(calls: RedisCalls) {
    this.#calls = calls;
  }

  /** Order a commit happening now (its ticket's generation comes from the fleet's clock). */
  async reserve(id: RemoteCacheId): Promise<ReserveOutcome> {
    assertCacheId(id);
    const attempt = await this.#calls.nextGeneration("lookup");
    return attempt.ok ? { ok: true, ticket: Object.freeze({ generation: attempt.value }) } : { ok: false, reason: "unavailable" };
  }

  async upload(ticket: UploadTicket, state: RemoteState, file: FileHandle): Promise<UploadOutcome> {
    assertCacheId(state.id);
    if (!ticket || !Number.isSafeInteger(ticket.generation) || ticket.generation <= 0) {
      throw invalidArgument("ticket", "upload needs the ticket reserve() returned.");
    }
    const outcome = await this.#uploadAndPublish(ticket.generation, state, file);
    const counters = this.#calls.counters;
    if (outcome.outcome === "published") {
      counters.uploadsPublished += 1;
      counters.bytesUploaded += outcome.bytes;
    } else if (outcome.outcome === "superseded") counters.uploadsSuperseded += 1;
    else if (outcome.outcome === "deleted") counters.uploadsDeleted += 1;
    else counters.uploadsFailed += 1;
    if (outcome.outcome === "failed" || outcome.outcome === "changed") {
      this.#calls.logger.debug(logLine("remote upload not published", { cacheKey: state.id.cacheKey, ...outcome }));
    }
    return outcome;
  }

  /** Send the chunks (unless the same bytes are published already), then publish the record. */
  async #uploadAndPublish(generation: number, state: RemoteState, file: FileHandle): Promise<UploadOutcome> {
    const { id } = state;
    const { keys, settings } = this.#calls;
    const heads = keys.heads(id.cacheKey, id.scopeId);
    const field = scopeTag(id);
    const read = await this.#calls.readRecord("transfer", id);
    if (!read.ok) return uploadFailure(read, "reading the current record");
    const current = read.value !== null && !("error" in read.value) ? read.value : null;
    if (current && current.generation >= generation) return { outcome: "superseded" };

    // Identical bytes already published: point the new record at them, upload nothing.
    const reuse = current !== null && current.xxh64 === state.xxh64 && current.size === state.size;
    const dataGeneration = reuse ? current.dataGeneration : generation;
    const chunkBytes = reuse ? current.chunkBytes : settings.chunkBytes;
    const dataKey = keys.data(id, state.xxh64, dataGeneration);
    let bytes = 0;
    if (!reuse) {
      const sent = await this.#sendChunks(dataKey, state, file);
      if (sent !== null) {
        await this.#calls.unlink(dataKey);
        return sent;
      }
      bytes = state.size;
    }
    const record: RemoteRecord = {
      format: state.tokenChunks ? CHUNKED_RECORD_FORMAT : RECORD_FORMAT,
      ...(state.tokenChunks ? { tokenChunks: state.tokenChunks } : {}),
      id: { scopeId: id.scopeId ?? null, modelId: id.modelId, fingerprint: id.fingerprint, configHash: id.configHash, cacheKey: id.cacheKey },
      size: state.size,
      xxh64: state.xxh64,
      messageCount: state.messageCount,
      tokenCount: state.tokenCount,
      chain: state.chain ? [...state.chain] : null,
      committedAt: state.committedAt,
      generation,
      chunkBytes,
      chunks: chunkCount(state.size, chunkBytes),
      dataGeneration,
    };
    const published = await this.#calls.transfer("publish", (c) =>
      c.eval(PUBLISH, {
        keys: [heads, keys.tombs(id.cacheKey, id.scopeId), dataKey],
        arguments: [field, String(generation), serializeRecord(record), String(record.chunks), String(settings.ttlSeconds ?? 0), id.modelId],
      }),
    );
    // A publish that timed out may have landed: keep the data (it expires if not).
    if (!published.ok) return uploadFailure(published, "publishing");
    const [verdict, previousText] = (Array.isArray(published.value) ? published.value : []).map(asText);
    if (verdict !== "published") {
      if (!reuse) await this.#calls.unlink(dataKey);
      if (verdict === "superseded") return { outcome: "superseded" };
      if (verdict === "deleted") return { outcome: "deleted" };
      return { outcome: "failed", reason: `publish refused: ${verdict ?? "no answer"} (chunks evicted during the upload?)` };
    }
    if (previousText) await this.#calls.unlinkDataOf(previousText, dataKey);

    // A delete of everything runs in another slot: check it after publishing. A delete that
    // started before this check either sees the record in its scan, or is seen here.
    const all = await this.#calls.transfer("check delete-all", (c) => c.get(keys.deletedAll));
    if (all.ok && Number(asText(all.value) ?? 0) >= generation) {
      await this.#calls.transfer("drop", (c) => c.eval(DROP_IF_GENERATION, { keys: [heads], arguments: [field, String(generation)] }));
      if (!reuse) await this.#calls.unlink(dataKey);
      return { outcome: "deleted" };
    }
    if (record.chain && record.chain.length > 0) await this.#indexPrefixes(record);
    return { outcome: "published", bytes };
  }

  /** Read `file` chunk by chunk into `dataKey`, hashing on the way. Null when all chunks were sent and match `state`. */
  async #sendChunks(dataKey: string, state: RemoteState, file: FileHandle): Promise<UploadOutcome | null> {
    const stat = await file.stat();
    if (stat.size !== state.size) return { outcome: "changed" };
    await hashReady; // stream through WebAssembly (the fallback keeps every chunk until the end)
    const hash = createXxh64();
    const { chunkBytes } = this.#calls.settings;
    const chunks = chunkCount(state.size, chunkBytes);
    const inFlight: Array<Promise<Guarded<unknown>>> = [];
    let failed: UploadFailure | null = null;
    let changed = false;
    for (let index = 0; index < chunks; index++) {
      const length = chunkLength(state.size, chunkBytes, index);
      const buffer = Buffer.allocUnsafe(length);
      const { bytesRead } = await file.read(buffer, 0, length, index * chunkBytes);
      if (bytesRead !== length) {
        changed = true;
        break;
      }
      hash.update(buffer);
      const refreshTtl = index % 16 === 0;
      inFlight.push(
        this.#calls.transfer("send chunk", async (c) => {
          const sent = c.hSet(dataKey, String(index), buffer);
          if (refreshTtl) await c.expire(dataKey, PENDING_TTL_SECONDS);
          await sent;
          await crashPoint("remote:after-chunk");
        }),
      );
      if (inFlight.length >= PIPELINE_DEPTH) {
        const attempt = await inFlight.shift()!;
        if (!attempt.ok) {
          failed = uploadFailure(attempt, "sending a chunk");
          break;
        }
      }
    }
    for (const attempt of await Promise.all(inFlight.splice(0))) {
      if (!attempt.ok) failed ??= uploadFailure(attempt, "sending a chunk");
    }
    if (failed) return failed;
    await crashPoint("remote:before-publish");
    if (changed || hash.digestHex() !== state.xxh64) return { outcome: "changed" };
    return null;
  }

  /** File the state under each key of its chain in its scope's prefix index (scripts.ts). */
  async #indexPrefixes(record: RemoteRecord): Promise<void> {
    const chain = record.chain!;
    await this.#calls.transfer("index prefixes", (c) =>
      c.eval(INDEX_PREFIXES, {
        keys: [this.#calls.keys.prefixIndex(record.id)],
        arguments: [record.id.cacheKey, String(this.#calls.settings.ttlSeconds ?? 0), ...chain],
      }),
    );
  }
}
