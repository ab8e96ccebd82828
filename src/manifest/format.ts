/**
 * The manifest beside each cache file (pure: parse, serialise, decide trust).
 *
 * A manifest has two slots. `current` describes the committed state. `pending` describes a
 * state being committed: it is written *before* the new file is renamed over the cache, so
 * whatever instant a crash hits, the file on disk matches one of the two slots (see
 * ARCHITECTURE.md, "Commit protocol"). A file is matched to a slot by its identity —
 * size, inode and mtime — which a rename keeps and any rewrite changes.
 */
import { type FileIdentity, sameIdentity } from "../durable/identity.js";
import { SCOPE_ID_PATTERN } from "../keys/scope.js";
import type { CacheRefusalReason } from "../types.js";

export const MANIFEST_FORMAT = 1;

/**
 * The format of a manifest that names chunks (an entry with `chunks`): a version that reads
 * only format 1 refuses it instead of handing the tail file (not a whole state) to an engine.
 */
export const CHUNKED_MANIFEST_FORMAT = 2;

/**
 * The largest manifest kvkeep reads (256 KiB). A manifest kvkeep writes is well under 1 KiB
 * today; the bound leaves room for per-entry data to come (a prefix chain of ~4096 messages ×
 * 16 hex chars per slot is ~140 KiB) while a planted huge or sparse file costs nothing.
 */
export const MANIFEST_MAX_BYTES = 256 * 1024;

export interface ManifestEntry extends FileIdentity {
  /** XXH64 of the whole file, 16 lowercase hex chars. */
  xxh64: string;
  /** Messages of the conversation the state covers (the saved count). */
  messageCount: number;
  /** Tokens in the state, when the engine reported it. */
  tokenCount: number | null;
  /** When the state was committed (ms since the epoch). */
  committedAt: number;
  /**
   * What the state holds, for prefix reuse: the message-key chain of the conversation it
   * covers (`messageKeyChain(history).key(i)` for i = 1…, 16 hex chars each; at most
   * MAX_CHAIN_KEYS, the first ones), or null when unknown (a primed state, a handler that
   * did not pass its history). See src/prefix/prefix-index.ts.
   */
  chain?: readonly string[] | null;
  /**
   * Set when the state is stored as content-addressed token chunks (docs/chunks-format.md):
   * the cache file then holds only the tail chunk (kvkc encoding), and the full chunks live
   * under `.kvkeep/chunks/<context>/`. Absent: the cache file is the whole state.
   */
  chunks?: ChunkedState | null;
}

/** How a chunked state is assembled: its full chunks in order, then the cache file (the tail). */
export interface ChunkedState {
  /** The state context's digest (32 hex): model, KV layout and scope; the chunks' directory. */
  context: string;
  /** The KV geometry (encodeKvGeometry, base64): what a join needs to rebuild the state. */
  geometry: string;
  /** Where the sequence sits in the engine's state (stream count, stream, sequence id). */
  placement: { nStream: number; streamIndex: number; seqId: number };
  /** Tokens per full chunk (64 by default, DEFAULT_CHUNK_TOKENS). */
  chunkTokens: number;
  /** The full chunks' ids (32 hex each), first token first. */
  ids: readonly string[];
  /** Tokens in the whole state: ids.length × chunkTokens + the tail's. */
  tokens: number;
}

/** Most full chunks one entry names (384 000 tokens at 64 per chunk; a longer state is committed whole; ~210 KiB of ids). */
export const MAX_CHUNK_IDS = 6000;

const CHUNK_ID = /^[0-9a-f]{32}$/;

/** The chunks of an entry: a chunked entry this version cannot read makes the manifest invalid. */
export function parseChunkedState(value: unknown): ChunkedState | null | "invalid" {
  if (value === undefined || value === null) return null;
  const c = value as Partial<ChunkedState>;
  if (typeof c !== "object") return "invalid";
  const p = c.placement as Partial<ChunkedState["placement"]> | undefined;
  if (
    typeof c.context !== "string" ||
    !CHUNK_ID.test(c.context) ||
    typeof c.geometry !== "string" ||
    c.geometry.length > 64 * 1024 ||
    !/^[A-Za-z0-9+/]*={0,2}$/.test(c.geometry) ||
    !p ||
    typeof p !== "object" ||
    !isInt(p.nStream) ||
    !isInt(p.streamIndex) ||
    !isInt(p.seqId) ||
    !isInt(c.chunkTokens) ||
    c.chunkTokens < 1 ||
    c.chunkTokens > 1 << 20 ||
    !Array.isArray(c.ids) ||
    c.ids.length > MAX_CHUNK_IDS ||
    !c.ids.every((id) => typeof id === "string" && CHUNK_ID.test(id)) ||
    !isInt(c.tokens) ||
    c.tokens < c.ids.length * c.chunkTokens ||
    c.tokens >= (c.ids.length + 1) * c.chunkTokens
  ) {
    return "invalid";
  }
  return {
    context: c.context,
    geometry: c.geometry,
    placement: { nStream: p.nStream, streamIndex: p.streamIndex, seqId: p.seqId },
    chunkTokens: c.chunkTokens,
    ids: c.ids as string[],
    tokens: c.tokens,
  };
}

/** Keys of a chain kept in a manifest entry: the first 4 096 messages (~80 KB of JSON per slot). */
export const MAX_CHAIN_KEYS = 4096;

const CHAIN_KEY = /^[0-9a-f]{16}$/;

/**
 * The chain of an entry, or null. A chain only tells the prefix index what a state holds (a
 * borrower's engine still compares tokens), so one this version does not accept — longer than
 * MAX_CHAIN_KEYS or than the state's messages (another version's limits), keys of another form
 * — is dropped, never a reason to distrust the state and remove its conversation's cache.
 */
export function parseChain(value: unknown, messageCount: number): readonly string[] | null {
  if (
    !Array.isArray(value) ||
    value.length > MAX_CHAIN_KEYS ||
    value.length > messageCount ||
    !value.every((k) => typeof k === "string" && CHAIN_KEY.test(k))
  ) {
    return null;
  }
  return value as string[];
}

export interface Manifest {
  /** 1, or CHUNKED_MANIFEST_FORMAT when an entry names chunks (serializeManifest decides). */
  format: typeof MANIFEST_FORMAT | typeof CHUNKED_MANIFEST_FORMAT;
  kind: "named" | "auto";
  /**
   * The id of the cache's isolation scope (src/keys/scope.ts); absent for the shared space,
   * so a manifest without scopes is written as before. The path says it too: this is the
   * second witness, so a cache copied into another scope's space is refused as foreign.
   */
  scope?: string | undefined;
  modelId: string;
  fingerprint: string | null;
  configHash: string;
  cacheKey: string;
  current: ManifestEntry | null;
  pending: ManifestEntry | null;
}

/** What a cache must be to be handed to a given session's engine. */
export interface ManifestExpectation {
  /** The scope id expected; absent or undefined for the shared space. */
  scope?: string | undefined;
  modelId: string;
  fingerprint: string | null;
  configHash: string;
  cacheKey: string;
  /**
   * The reader loads the cache file itself and cannot assemble a chunked state (a whole-file
   * session): a manifest naming chunks is then foreign to it. Default false.
   */
  wholeOnly?: boolean | undefined;
}

const isInt = (v: unknown): v is number => typeof v === "number" && Number.isSafeInteger(v) && v >= 0;
const isDecimal = (v: unknown): v is string => typeof v === "string" && /^\d{1,20}$/.test(v);

function parseEntry(value: unknown): ManifestEntry | null | "invalid" {
  if (value === null) return null;
  const e = value as Partial<ManifestEntry> | undefined;
  if (
    !e ||
    typeof e !== "object" ||
    !isInt(e.size) ||
    !isDecimal(e.ino) ||
    !isDecimal(e.mtimeNs) ||
    typeof e.xxh64 !== "string" ||
    !/^[0-9a-f]{16}$/.test(e.xxh64) ||
    !isInt(e.messageCount) ||
    !(e.tokenCount === null || isInt(e.tokenCount)) ||
    !isInt(e.committedAt)
  ) {
    return "invalid";
  }
  const chain = parseChain(e.chain, e.messageCount);
  const chunks = parseChunkedState(e.chunks);
  if (chunks === "invalid") return "invalid";
  return {
    size: e.size,
    ino: e.ino,
    mtimeNs: e.mtimeNs,
    xxh64: e.xxh64,
    messageCount: e.messageCount,
    tokenCount: e.tokenCount,
    committedAt: e.committedAt,
    chain,
    ...(chunks ? { chunks } : {}),
  };
}

/** Parse a manifest; a reason string for anything garbled, truncated or of another format. */
export function parseManifest(text: string): Manifest | { error: string } {
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch {
    return { error: "manifest is not valid JSON" };
  }
  const m = raw as Partial<Manifest> | null;
  if (!m || typeof m !== "object") return { error: "manifest is not an object" };
  if (m.format !== MANIFEST_FORMAT && m.format !== CHUNKED_MANIFEST_FORMAT) {
    return { error: `manifest format ${String(m.format)} is not ${MANIFEST_FORMAT} or ${CHUNKED_MANIFEST_FORMAT}` };
  }
  if (m.kind !== "named" && m.kind !== "auto") return { error: "manifest kind is invalid" };
  for (const field of ["modelId", "configHash", "cacheKey"] as const) {
    if (typeof m[field] !== "string") return { error: `manifest ${field} is missing` };
  }
  if (!(m.fingerprint === null || typeof m.fingerprint === "string")) return { error: "manifest fingerprint is invalid" };
  if (m.scope !== undefined && !(typeof m.scope === "string" && SCOPE_ID_PATTERN.test(m.scope))) return { error: "manifest scope is invalid" };
  const current = parseEntry(m.current);
  const pending = parseEntry(m.pending);
  if (current === "invalid" || pending === "invalid") return { error: "manifest entry is invalid" };
  if (current === null && pending === null) return { error: "manifest describes no state" };
  return {
    format: m.format,
    kind: m.kind,
    ...(m.scope !== undefined ? { scope: m.scope } : {}),
    modelId: m.modelId!,
    fingerprint: m.fingerprint ?? null,
    configHash: m.configHash!,
    cacheKey: m.cacheKey!,
    current,
    pending,
  };
}

export function serializeManifest(manifest: Manifest): string {
  const chunked = Boolean(manifest.current?.chunks || manifest.pending?.chunks);
  return JSON.stringify({ ...manifest, format: chunked ? CHUNKED_MANIFEST_FORMAT : MANIFEST_FORMAT }, null, 1) + "\n";
}

/**
 * Which slot of a manifest the file on disk is, judged without reading the file.
 * - `match`: the identity equals a slot's (the file is the one kvkeep committed);
 * - `checksum`: a slot has the file's size but not its identity (copied, restored, or
 *   rewritten in place) — only a checksum can tell, and `candidates` lists what to compare;
 * - `reject`: the manifest belongs to another model/config/key (`refusal: "foreign"`), or the
 *   file is empty or no slot has its size (`"corrupt"`).
 */
export type ManifestVerdict =
  | { verdict: "match"; entry: ManifestEntry; slot: "current" | "pending" }
  | { verdict: "checksum"; candidates: Array<{ entry: ManifestEntry; slot: "current" | "pending" }> }
  | { verdict: "reject"; reason: string; refusal: CacheRefusalReason };

export function judgeFile(manifest: Manifest, expect: ManifestExpectation, file: FileIdentity): ManifestVerdict {
  const foreign = (reason: string): ManifestVerdict => ({ verdict: "reject", reason, refusal: "foreign" });
  if ((manifest.scope ?? null) !== (expect.scope ?? null)) return foreign("manifest is for another scope");
  if (manifest.modelId !== expect.modelId) return foreign(`manifest is for model ${manifest.modelId}`);
  if (manifest.cacheKey !== expect.cacheKey || manifest.configHash !== expect.configHash) {
    return foreign("manifest is for another cache key or config");
  }
  if (manifest.fingerprint !== expect.fingerprint) {
    return foreign(`model fingerprint differs (cache ${manifest.fingerprint ?? "none"}, session ${expect.fingerprint ?? "none"})`);
  }
  if (expect.wholeOnly && (manifest.current?.chunks || manifest.pending?.chunks)) {
    return foreign("chunked cache; this session reads whole files");
  }
  if (file.size === 0) return { verdict: "reject", reason: "cache file is empty", refusal: "corrupt" };
  const slots = (["pending", "current"] as const).flatMap((slot) => {
    const entry = manifest[slot];
    return entry ? [{ entry, slot }] : [];
  });
  const exact = slots.find((s) => sameIdentity(s.entry, file));
  if (exact) return { verdict: "match", entry: exact.entry, slot: exact.slot };
  const sized = slots.filter((s) => s.entry.size === file.size);
  if (sized.length > 0) return { verdict: "checksum", candidates: sized };
  return { verdict: "reject", reason: `file size ${file.size} matches no committed state`, refusal: "corrupt" };
}
