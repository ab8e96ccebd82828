/**
 * The records of the shared index log (pure: encode and decode lines).
 *
 * One JSON object per line, each describing one change to one cache:
 *   {"op":"put","p":"<cacheKey>/<modelId>/<configHash>.bin","b":<bytes>,"u":<ms>,"w":"<writer>"}
 *   {"op":"use","p":"…","b":<bytes>,"u":<ms>,"w":"…"}
 *   {"op":"del","p":"…","u":<ms>,"w":"…"}
 * `p` is relative to the cache root with `/` separators; `u` is when it happened
 * (ms since the epoch); `w` identifies the store that wrote it, so a store skips its own.
 * A `put` of a state whose conversation is known also carries what the prefix index needs:
 *   "f": model fingerprint (or null), "c": [message keys], "m": messages, "t": tokens (or null).
 * A `put` of a chunked state carries its chunks (docs/chunks-format.md), for physical-bytes
 * accounting: "kc": the context digest, "k": [full chunk ids], "cb": bytes of each chunk.
 */
import { MAX_CHAIN_KEYS, MAX_CHUNK_IDS } from "../manifest/format.js";
import type { ChunkRefs, IndexEntry, PrefixInfo } from "./entry.js";

export type LogOp = "put" | "use" | "del";

export interface LogRecord {
  op: LogOp;
  /** `<cacheKey>/<modelId>/<configHash>.bin`, relative to the root. */
  p: string;
  /** Bytes of the cache (`put`; also `use`, so a reader that missed the `put` learns of it). */
  b?: number;
  u: number;
  w: string;
  /** Prefix facts of a `put` (all four or none). */
  f?: string | null;
  c?: readonly string[];
  m?: number;
  t?: number | null;
  /** Chunks of a `put` (all three or none). */
  kc?: string;
  k?: readonly string[];
  cb?: number;
}

/** The chunks a `put` record names, or null. */
export function chunksOfRecord(record: LogRecord): ChunkRefs | null {
  if (record.kc === undefined || record.k === undefined || record.cb === undefined) return null;
  return { context: record.kc, ids: record.k, chunkBytes: record.cb };
}

/** The fields of a `put` record that carry `chunks`. */
export function chunkFields(chunks: ChunkRefs | null | undefined): Pick<LogRecord, "kc" | "k" | "cb"> {
  return chunks ? { kc: chunks.context, k: chunks.ids, cb: chunks.chunkBytes } : {};
}

const HEX128 = /^[0-9a-f]{32}$/;

function parseChunks(r: Partial<LogRecord>): Pick<LogRecord, "kc" | "k" | "cb"> | null {
  if (r.k === undefined && r.kc === undefined && r.cb === undefined) return {};
  const ok =
    typeof r.kc === "string" &&
    HEX128.test(r.kc) &&
    Array.isArray(r.k) &&
    r.k.length <= MAX_CHUNK_IDS &&
    r.k.every((id) => typeof id === "string" && HEX128.test(id)) &&
    isMs(r.cb);
  return ok ? { kc: r.kc!, k: r.k!, cb: r.cb! } : null;
}

/** The prefix facts a `put` record carries, or null. */
export function prefixOfRecord(record: LogRecord): PrefixInfo | null {
  if (record.c === undefined || record.m === undefined || record.f === undefined || record.t === undefined) return null;
  return { fingerprint: record.f, chain: record.c, messageCount: record.m, tokenCount: record.t };
}

/** The fields of a `put` record that carry `prefix`. */
export function prefixFields(prefix: PrefixInfo | null | undefined): Pick<LogRecord, "f" | "c" | "m" | "t"> {
  return prefix ? { f: prefix.fingerprint, c: prefix.chain, m: prefix.messageCount, t: prefix.tokenCount } : {};
}

/**
 * About how long the `put` record of `entry` is in a snapshot of the log (within a few bytes:
 * the numbers' and writer id's lengths vary). A prefix chain's keys dominate for long
 * conversations: 16 hex chars, quotes and a comma each.
 */
export function snapshotRecordBytes(entry: IndexEntry): number {
  const path = entry.cacheKey.length + entry.modelId.length + entry.configHash.length + 6 + (entry.scopeId ? 41 : 0);
  const prefix = entry.prefix ? 40 + (entry.prefix.fingerprint?.length ?? 4) + 19 * entry.prefix.chain.length : 0;
  const chunks = entry.chunks ? 70 + 35 * entry.chunks.ids.length : 0;
  return 64 + path + prefix + chunks;
}

const CHAIN_KEY = /^[0-9a-f]{16}$/;

function parsePrefix(r: Partial<LogRecord>): Pick<LogRecord, "f" | "c" | "m" | "t"> | null {
  if (r.c === undefined) return {};
  const ok =
    Array.isArray(r.c) &&
    r.c.length <= MAX_CHAIN_KEYS &&
    r.c.every((k) => typeof k === "string" && CHAIN_KEY.test(k)) &&
    isMs(r.m) &&
    r.c.length <= r.m &&
    (r.f === null || typeof r.f === "string") &&
    (r.t === null || isMs(r.t));
  return ok ? { f: r.f!, c: r.c!, m: r.m!, t: r.t! } : null;
}

export function encodeRecord(record: LogRecord): string {
  return JSON.stringify(record) + "\n";
}

const isMs = (v: unknown): v is number => typeof v === "number" && Number.isSafeInteger(v) && v >= 0;

function parseRecord(text: string): LogRecord | null {
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch {
    return null;
  }
  const r = raw as Partial<LogRecord> | null;
  if (!r || typeof r !== "object") return null;
  if (r.op !== "put" && r.op !== "use" && r.op !== "del") return null;
  if (typeof r.p !== "string" || typeof r.w !== "string" || !isMs(r.u)) return null;
  if (r.op === "put" && !isMs(r.b)) return null;
  if (r.op === "put") {
    const prefix = parsePrefix(r);
    const chunks = parseChunks(r);
    if (!prefix || !chunks) return null;
    return { op: r.op, p: r.p, b: r.b!, u: r.u, w: r.w, ...prefix, ...chunks };
  }
  return r.op !== "del" && isMs(r.b) ? { op: r.op, p: r.p, b: r.b, u: r.u, w: r.w } : { op: r.op, p: r.p, u: r.u, w: r.w };
}

/**
 * Decode complete lines. A line that does not parse is skipped — except that a record
 * glued to the torn remains of a writer killed mid-line (`{"op":"pu{"op":"del",…}`) is
 * recovered from its last `{"op":`.
 */
export function decodeLines(text: string): { records: LogRecord[]; skipped: number } {
  const records: LogRecord[] = [];
  let skipped = 0;
  for (const line of text.split("\n")) {
    if (line.length === 0) continue;
    let record = parseRecord(line);
    if (!record) {
      const start = line.lastIndexOf('{"op":');
      if (start > 0) record = parseRecord(line.slice(start));
    }
    if (record) records.push(record);
    else skipped++;
  }
  return { records, skipped };
}
