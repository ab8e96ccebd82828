/**
 * Token chunks in Redis (docs/chunks-format.md): content-addressed, one STRING key per state context
 * and id (`keys.tokenChunk`), shared by every state that names it. An upload sends only the
 * chunks the tier lacks (EXISTS first, then SET NX: two writers of one chunk both succeed, the
 * first one's bytes stay) and refreshes the TTL of the others; a fetch reads one chunk (and
 * refreshes its TTL). Bytes are never trusted here: the store verifies every chunk it reads
 * (size, geometry, checksum, identity recomputed from parent + tokens + context).
 */
import { crashPoint } from "../../durable/crash-points.js";
import type { GetChunkOutcome, PutChunksOutcome } from "../types.js";
import type { RedisCalls } from "./calls.js";
import { failureReason } from "./calls.js";

/** Ids checked per EXISTS round trip. */
const EXISTS_BATCH = 64;

export class TokenChunks {
  constructor(private readonly calls: RedisCalls) {}

  async put(context: string, ids: readonly string[], read: (id: string) => Promise<Uint8Array | null>): Promise<PutChunksOutcome> {
    const { keys, settings } = this.calls;
    const ttl = settings.ttlSeconds;
    let uploaded = 0;
    let bytes = 0;
    for (let at = 0; at < ids.length; at += EXISTS_BATCH) {
      const batch = ids.slice(at, at + EXISTS_BATCH);
      const present = await this.calls.transfer("check token chunks", (c) => Promise.all(batch.map((id) => c.exists(keys.tokenChunk(context, id)))));
      if (!present.ok) return { ok: false, reason: failureReason(present, "checking token chunks") };
      for (const [i, id] of batch.entries()) {
        const key = keys.tokenChunk(context, id);
        if (Number(present.value[i]) === 1) {
          // A use, for its TTL and for `kvkeep gc --remote`'s idle margin (EXISTS is not one).
          await this.calls.transfer("refresh token chunk", (c) => (ttl !== null ? c.expire(key, ttl) : c.touch(key)));
          continue;
        }
        const data = await read(id);
        if (data === null) return { ok: false, reason: `token chunk ${id} is not on the local disk` };
        const sent = await this.calls.transfer("send token chunk", (c) =>
          c.set(key, Buffer.from(data.buffer, data.byteOffset, data.byteLength), { NX: true, ...(ttl !== null ? { EX: ttl } : {}) }),
        );
        if (!sent.ok) return { ok: false, reason: failureReason(sent, "sending a token chunk") };
        await crashPoint("remote:after-token-chunk");
        if (sent.value !== null) {
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
