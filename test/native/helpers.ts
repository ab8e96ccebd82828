/** Shared by the native tests: the two backends, temp dirs, deterministic random bytes, child processes. */
import { type ChildProcessWithoutNullStreams, spawn } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { createInterface } from "node:readline";
import { fileURLToPath } from "node:url";
import type { NativeBinding } from "../../src/native/binding.js";
import { createJsFallbackFs } from "../../src/native/fallback.js";
import { nativeDisabledByEnv, openNativeBackend } from "../../src/native/loader.js";
import type { NativeFs } from "../../src/native/types.js";

export const repoRoot = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../..");

/**
 * Native-only tests are skipped only when the run sets KVKEEP_NO_NATIVE=1 (the fallback
 * job). Otherwise a missing addon makes them fail loudly: openNativeBackend throws
 * NATIVE_UNAVAILABLE saying where it looked and how to build.
 */
export const nativeSkipped = nativeDisabledByEnv();
export const NATIVE_SKIP_REASON = "KVKEEP_NO_NATIVE=1 is set for this run: native-only tests are skipped";
if (nativeSkipped) console.warn(`[kvkeep test] ${NATIVE_SKIP_REASON}`);

export function nativeSuiteName(name: string): string {
  return nativeSkipped ? `${name} (skipped: ${NATIVE_SKIP_REASON})` : name;
}

let native: { fs: NativeFs; binding: NativeBinding } | undefined;
export function requireNative(): { fs: NativeFs; binding: NativeBinding } {
  native ??= openNativeBackend();
  return native;
}

export interface BackendCase {
  readonly name: "native" | "js-fallback";
  readonly skip: boolean;
  readonly get: () => NativeFs;
}

/** For describe.each: the same semantic tests against both backends. */
export const backends: BackendCase[] = [
  { name: "native", skip: nativeSkipped, get: () => requireNative().fs },
  { name: "js-fallback", skip: false, get: () => createJsFallbackFs() },
];

export function suiteName(backend: BackendCase, what: string): string {
  return backend.skip ? `${what} [${backend.name}] (skipped: ${NATIVE_SKIP_REASON})` : `${what} [${backend.name}]`;
}

export class TempDirs {
  readonly #dirs: string[] = [];

  make(prefix = "kvkeep-native-"): string {
    const dir = mkdtempSync(path.join(tmpdir(), prefix));
    this.#dirs.push(dir);
    return dir;
  }

  cleanup(): void {
    for (const dir of this.#dirs.splice(0)) rmSync(dir, { recursive: true, force: true });
  }
}

/** Deterministic bytes from a 32-bit seed (mulberry32), so a failing case can be replayed. */
export function seededBytes(size: number, seed: number): Buffer {
  const out = Buffer.allocUnsafe(size);
  let state = seed >>> 0;
  let i = 0;
  for (; i + 4 <= size; i += 4) {
    state = (state + 0x6d2b79f5) >>> 0;
    let t = state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    out.writeUInt32LE((t ^ (t >>> 14)) >>> 0, i);
  }
  for (; i < size; i++) out[i] = (seed + i * 131) & 0xff;
  return out;
}

/** Resolves after the event loop has turned a few times (used to show something did NOT happen). */
export function settle(ms = 30): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** Tracks whether a promise settled, without attaching a rejection the test would miss. */
export function track<T>(promise: Promise<T>): { promise: Promise<T>; readonly settled: boolean } {
  const state = { settled: false };
  promise.then(
    () => (state.settled = true),
    () => (state.settled = true),
  );
  return {
    promise,
    get settled() {
      return state.settled;
    },
  };
}

const LOCK_CHILD = path.join(repoRoot, "test/native/fixtures/lock-child.ts");

/**
 * A child process driving one lock through test/native/fixtures/lock-child.ts, talking in
 * lines: it prints its state ("busy", "acquired", "waiting", "locked", "released") and
 * obeys "release" on stdin.
 */
export class LockChild {
  readonly proc: ChildProcessWithoutNullStreams;
  readonly #lines: string[] = [];
  readonly #waiters: Array<() => void> = [];
  #stderr = "";
  readonly exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;

  constructor(args: string[], env: NodeJS.ProcessEnv) {
    this.proc = spawn(process.execPath, ["--import", "tsx", LOCK_CHILD, ...args], {
      cwd: repoRoot,
      env,
      stdio: ["pipe", "pipe", "pipe"],
    });
    createInterface({ input: this.proc.stdout }).on("line", (line) => {
      this.#lines.push(line);
      for (const wake of this.#waiters.splice(0)) wake();
    });
    this.proc.stderr.on("data", (chunk: Buffer) => (this.#stderr += chunk.toString()));
    this.exited = new Promise((resolve) => {
      this.proc.on("exit", (code, signal) => {
        for (const wake of this.#waiters.splice(0)) wake();
        resolve({ code, signal });
      });
    });
  }

  /** Spawns a child that must run the native backend. */
  static native(args: string[]): LockChild {
    const env: NodeJS.ProcessEnv = { ...process.env, KVKEEP_EXPECT_NATIVE: "1" };
    delete env.KVKEEP_NO_NATIVE;
    return new LockChild(args, env);
  }

  /** The next line the child prints (fails if it exits first). */
  async nextLine(): Promise<string> {
    for (;;) {
      const line = this.#lines.shift();
      if (line !== undefined) return line;
      if (this.proc.exitCode !== null || this.proc.signalCode !== null) {
        throw new Error(`lock child exited (${this.proc.exitCode ?? this.proc.signalCode}) without output; stderr:\n${this.#stderr}`);
      }
      await new Promise<void>((resolve) => this.#waiters.push(resolve));
    }
  }

  async expectLine(expected: string): Promise<void> {
    const line = await this.nextLine();
    if (line !== expected) throw new Error(`lock child said ${JSON.stringify(line)}, expected ${JSON.stringify(expected)}; stderr:\n${this.#stderr}`);
  }

  send(command: string): void {
    this.proc.stdin.write(`${command}\n`);
  }

  get stderr(): string {
    return this.#stderr;
  }

  kill(): void {
    if (this.proc.exitCode === null && this.proc.signalCode === null) this.proc.kill("SIGKILL");
  }
}

/** One-shot: a child tries the lock once and reports "acquired" or "busy". */
export async function childTry(lockPath: string, mode: "exclusive" | "shared"): Promise<string> {
  const child = LockChild.native([lockPath, mode, "try"]);
  try {
    const line = await child.nextLine();
    const { code } = await child.exited;
    if (code !== 0) throw new Error(`lock child failed (${code}): ${child.stderr}`);
    return line;
  } finally {
    child.kill();
  }
}
