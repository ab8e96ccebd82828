/**
 * Token chunks in Redis (docs/chunks-format.md): content-addressed, one STRING key per state context
 * and id (`keys.tokenChunk`), shared by every state that names it. An upload uses the chunks
 * its state names before it publishes: one script per batch finds the present ones and
 * records their use (USE_CHUNKS), then each absent one is stored with its use (PUT_CHUNK);
 * `kvkeep gc --remote` removes only chunks no published state names and no use touched for
 * an hour (DROP_IF_UNUSED). A fetch reads one chunk (and refreshes its TTL). Bytes are never
 * trusted here: the store verifies every chunk it reads (size, geometry, checksum, identity
 * recomputed from parent + tokens + context).
 */
import { crashPoint } from "../../durable/crash-points.js";
import type { GetChunkOutcome, PutChunksOutcome } from "../types.js";
import type { RedisCalls } from "./calls.js";
import { asText } from "./connections.js";
import { failureReason } from "./calls.js";
import { PUT_CHUNK, USE_CHUNKS } from "./scripts.js";

/** Chunks checked (and used) per script call. */
const USE_BATCH = 64;

export class TokenChunks {
  constructor(private readonly calls: RedisCalls) {}

  async put(context: string, ids: readonly string[], read: (id: string) => Promise<Uint8Array | null>): Promise<PutChunksOutcome> {
    const { keys, settings } = this.calls;
    const ttl = String(settings.ttlSeconds ?? 0);
    const used = keys.tokenChunkUses(context);
    let uploaded = 0;
    let bytes = 0;
    for (let at = 0; at < ids.length; at += USE_BATCH) {
      const batch = ids.slice(at, at + USE_BATCH);
      const present = await this.calls.transfer("check token chunks", (c) =>
        c.eval(USE_CHUNKS, { keys: [used, ...batch.map((id) => keys.tokenChunk(context, id))], arguments: [ttl, ...batch] }),
      );
      if (!present.ok) return { ok: false, reason: failureReason(present, "checking token chunks") };
      const found = present.value as unknown[];
      if (!Array.isArray(found) || found.length !== batch.length) return { ok: false, reason: "checking token chunks: an unexpected reply" };
      for (const [i, id] of batch.entries()) {
        if (Number(found[i]) === 1) continue; // present, and its use recorded
        const data = await read(id);
        if (data === null) return { ok: false, reason: `token chunk ${id} is not on the local disk` };
        const sent = await this.calls.transfer("send token chunk", (c) =>
          c.eval(PUT_CHUNK, { keys: [keys.tokenChunk(context, id), used], arguments: [Buffer.from(data.buffer, data.byteOffset, data.byteLength), ttl, id] }),
        );
        if (!sent.ok) return { ok: false, reason: failureReason(sent, "sending a token chunk") };
        await crashPoint("remote:after-token-chunk");
        if (Number(asText(sent.value)) === 1) {
          uploaded++;
          bytes += data.byteLength;
        }
      }
    }
    return { ok: true, uploaded, bytes };
  }

  async get(context: string, id: string): Promise<GetChunkOutcome> {
    const { keys, settings } = this.calls;
    const key = keys.tokenChunk(context, id);
    const ttl = settings.ttlSeconds;
    const got = await this.calls.transfer(
      "fetch token chunk",
      async (c) => {
        const value = (await c.get(key)) as unknown;
        if (value !== null && ttl !== null) await c.expire(key, ttl);
        return value;
      },
      true,
    );
    if (!got.ok) return { ok: false, reason: "unavailable" };
    const value = got.value as Buffer | Uint8Array | null;
    if (value === null) return { ok: true, bytes: null };
    return { ok: true, bytes: Buffer.isBuffer(value) ? value : Buffer.from(value.buffer, value.byteOffset, value.byteLength) };
  }
}
