/** State files for remote-tier tests: random bytes on disk, uploaded and fetched through a tier. */
import { randomBytes } from "node:crypto";
import { promises as fs } from "node:fs";
import path from "node:path";
import { xxh64Hex } from "../../../src/keys/hash.js";
import type { RemoteCacheId, RemoteState, RemoteTier, UploadOutcome } from "../../../src/remote/types.js";

/**
 * The deadline the functional tests give lookups. The machine running the tests is shared
 * and often loaded: a 200 ms deadline there measures the machine, not kvkeep, and a late
 * reply would read as an outage. The tests that pin deadlines (faults.test.ts) set theirs.
 */
export const TEST_TIMEOUT_MS = 3000;

let counter = 0;

export function cacheId(cacheKey: string, overrides: Partial<RemoteCacheId> = {}): RemoteCacheId {
  return { modelId: "tiny", fingerprint: "fp-1", configHash: "cfg0123456789abc", cacheKey, ...overrides };
}

export interface StateFile {
  path: string;
  bytes: Buffer;
  state: RemoteState;
}

/** Write `size` random bytes under `dir` and describe them as a state of `id`. */
export async function makeState(dir: string, id: RemoteCacheId, size: number, extra: Partial<RemoteState> = {}): Promise<StateFile> {
  const bytes = randomBytes(size);
  const file = path.join(dir, `state-${process.pid}-${++counter}.bin`);
  await fs.writeFile(file, bytes);
  return {
    path: file,
    bytes,
    state: { id, size, xxh64: xxh64Hex(bytes), messageCount: 3, tokenCount: 120, chain: null, committedAt: Date.now(), ...extra },
  };
}

/** Reserve a ticket now and upload the file under it. */
export async function reserveAndUpload(tier: RemoteTier, file: StateFile): Promise<UploadOutcome> {
  const reserved = await tier.reserve(file.state.id);
  if (!reserved.ok) throw new Error("reserve failed: the server is unavailable");
  return uploadWith(tier, reserved.ticket, file);
}

export async function uploadWith(tier: RemoteTier, ticket: { generation: number }, file: StateFile): Promise<UploadOutcome> {
  const handle = await fs.open(file.path, "r");
  try {
    return await tier.upload(ticket, file.state, handle);
  } finally {
    await handle.close();
  }
}

/** Fetch `id` into a fresh temp path under `dir`; the bytes on a hit. */
export async function fetchBytes(tier: RemoteTier, dir: string, id: RemoteCacheId): Promise<{ hit: boolean; reason?: string; bytes?: Buffer; temp: string }> {
  const temp = path.join(dir, `fetch-${process.pid}-${++counter}.tmp`);
  const got = await tier.fetchTo(id, temp);
  if (!got.hit) return { hit: false, reason: got.reason, temp };
  return { hit: true, bytes: await fs.readFile(temp), temp };
}

export async function exists(file: string): Promise<boolean> {
  return fs.stat(file).then(
    () => true,
    () => false,
  );
}

/** A logger that keeps what it was told. */
export function recordingLogger(): { lines: Array<{ level: string; line: string }>; debug(m: string): void; info(m: string): void; warn(m: string): void; error(m: string): void } {
  const lines: Array<{ level: string; line: string }> = [];
  return {
    lines,
    debug: (line) => lines.push({ level: "debug", line }),
    info: (line) => lines.push({ level: "info", line }),
    warn: (line) => lines.push({ level: "warn", line }),
    error: (line) => lines.push({ level: "error", line }),
  };
}
