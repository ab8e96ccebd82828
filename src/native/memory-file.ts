/**
 * In-memory files (Linux memfd through the addon): how the engine saves a state into memory
 * and loads one from memory, given only a path. See native/src/memfd.cc for the syscalls and
 * docs/chunks-format.md for what llama.cpp does with the path.
 */
import { errnoCode, fsWriteError } from "../errors.js";
import type { NativeBinding, NativeMemoryFile } from "./binding.js";
import { fsReadError, invalidArgument } from "./fs-errors.js";
import type { GatherPlan, GatherResult, MemoryFile, NativeFs } from "./types.js";

export const DEFAULT_MEMORY_FILE_NAME = "kvkeep-state";

/**
 * Failures that mean "this process has no usable memfd": the kernel lacks the syscall (or a
 * seccomp filter refuses it), or `/proc/self/fd/<fd>` does not name the file (no /proc).
 */
function isUnsupported(error: unknown): boolean {
  const code = errnoCode(error);
  const syscall = (error as { syscall?: unknown } | null)?.syscall;
  if (syscall === "stat") return true;
  return code === "ENOSYS" || code === "EPERM" || code === "EACCES";
}

function toBuffer(bytes: Uint8Array): Buffer {
  // Node-API buffers are Buffers in Node, plain Uint8Arrays in Bare: a view, never a copy.
  return Buffer.isBuffer(bytes) ? bytes : Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
}

function wrap(native: NativeMemoryFile): MemoryFile {
  const label = `the in-memory file ${native.path}`;
  return Object.freeze({
    get fd() {
      return native.fd;
    },
    path: native.path,
    size(): number {
      try {
        return native.size();
      } catch (error) {
        throw fsReadError(`sizing ${label}`, error);
      }
    },
    async read(into?: Uint8Array): Promise<Buffer> {
      try {
        return toBuffer(await native.read(into));
      } catch (error) {
        if (error instanceof TypeError) throw invalidArgument("into", `${label}: ${error.message}`);
        throw fsReadError(`reading ${label}`, error);
      }
    },
    async write(bytes: Uint8Array | readonly Uint8Array[]): Promise<void> {
      const parts = bytes instanceof Uint8Array ? [bytes] : Array.from(bytes);
      try {
        await native.write(parts);
      } catch (error) {
        if (error instanceof TypeError) throw invalidArgument("bytes", `${label}: ${error.message}`);
        throw fsWriteError(`writing ${label}`, error);
      }
    },
    async gather(plan: GatherPlan): Promise<GatherResult> {
      const files = plan.files;
      let result: { prefixes: Uint8Array; digests: Uint8Array };
      try {
        result = await native.gather(
          plan.size,
          files.map((f) => f.path),
          files.map((f) => f.size),
          files.map((f) => f.prefixBytes),
          plan.runs,
          plan.literals,
          plan.checksumFrom ?? -1,
        );
      } catch (error) {
        if (error instanceof TypeError) throw invalidArgument("plan", `${label}: ${error.message}`);
        const code = errnoCode(error);
        // A piece's own failure (missing, not a file, not its size) is the caller's to judge: it names the file.
        if (code === "ENOENT" || code === "ENOTREG" || code === "ELOOP" || code === "EWRONGSIZE") throw error;
        throw fsWriteError(`assembling ${label}`, error);
      }
      const bytes = toBuffer(result.prefixes);
      const prefixes: Buffer[] = [];
      let at = 0;
      for (const f of files) {
        prefixes.push(bytes.subarray(at, at + f.prefixBytes));
        at += f.prefixBytes;
      }
      const digestBytes = toBuffer(result.digests);
      const digests: bigint[] = [];
      for (let i = 0; i + 8 <= digestBytes.byteLength; i += 8) digests.push(digestBytes.readBigUInt64LE(i));
      return { prefixes, digests };
    },
    async readRanges(into: Uint8Array, ranges: Float64Array, size: number): Promise<void> {
      try {
        await native.readRanges(into, ranges, size);
      } catch (error) {
        if (error instanceof TypeError) throw invalidArgument("ranges", `${label}: ${error.message}`);
        throw fsReadError(`reading ${label}`, error);
      }
    },
    close(): void {
      native.close();
    },
  } satisfies MemoryFile);
}

/** NativeFs.createMemoryFile over the addon. */
export function createNativeMemoryFile(binding: NativeBinding, name: string = DEFAULT_MEMORY_FILE_NAME): MemoryFile | null {
  if (typeof name !== "string" || name.includes("\0") || Buffer.byteLength(name) > 249) {
    throw invalidArgument("name", `an in-memory file's name must be a string of at most 249 bytes without NUL, got ${JSON.stringify(name)}.`);
  }
  if (!binding.memoryFileSupported) return null;
  try {
    return wrap(new binding.MemoryFile(name));
  } catch (error) {
    if (isUnsupported(error)) return null;
    throw fsWriteError(`creating an in-memory file (${name})`, error);
  }
}

/**
 * Run `use` with a new in-memory file and close it afterwards, whatever happens. Resolves
 * `use`'s result, or null without calling it when the backend has no in-memory files.
 */
export async function withMemoryFile<T>(fs: NativeFs, use: (file: MemoryFile) => Promise<T>, name?: string): Promise<T | null> {
  const file = fs.createMemoryFile(name);
  if (file === null) return null;
  try {
    return await use(file);
  } finally {
    file.close();
  }
}
