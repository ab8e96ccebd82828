/** Test doubles for the warmer: controllable timers, in-memory storage, a recording logger. */
import type { Logger } from "../../src/logger.js";
import type { SettingsStorage, TimerDeps, WarmUsage } from "../../src/warm/index.js";

export const USAGE: WarmUsage = { inputTokens: 1000, outputTokens: 10, cacheReadTokens: 800, cacheWriteTokens: 0 };

export interface FakeTimer {
  readonly id: number;
  readonly ms: number;
  readonly fn: () => void;
}

/** Timers that only fire when told to. Cleared timers are remembered so a test can fire one anyway. */
export interface FakeTimers extends TimerDeps {
  /** Timers set and neither fired nor cleared, oldest first. */
  pending(): FakeTimer[];
  /** How many timers were ever set. */
  readonly setCount: number;
  /** Fire every pending timer (those pending now, not ones they set). */
  fireAll(): number;
  /** Call a timer's callback even if it was cleared or already fired (a late host timer). */
  fireAnyway(id: number): void;
}

export function fakeTimers(): FakeTimers {
  let nextId = 1;
  let setCount = 0;
  const pending = new Map<number, FakeTimer>();
  const all = new Map<number, FakeTimer>();
  return {
    setTimer(fn, ms) {
      const timer = { id: nextId++, ms, fn };
      setCount++;
      pending.set(timer.id, timer);
      all.set(timer.id, timer);
      return timer.id;
    },
    clearTimer(id) {
      pending.delete(id as number);
    },
    pending: () => [...pending.values()],
    get setCount() {
      return setCount;
    },
    fireAll() {
      const due = [...pending.values()];
      for (const timer of due) {
        pending.delete(timer.id);
        timer.fn();
      }
      return due.length;
    },
    fireAnyway(id) {
      pending.delete(id);
      all.get(id)?.fn();
    },
  };
}

export interface MemStorage extends SettingsStorage {
  readonly map: Map<string, string>;
  readonly writes: Array<[string, string]>;
}

export function memStorage(initial: Record<string, string> = {}): MemStorage {
  const map = new Map(Object.entries(initial));
  const writes: Array<[string, string]> = [];
  return {
    map,
    writes,
    get: async (key) => map.get(key) ?? null,
    set: async (key, value) => {
      writes.push([key, value]);
      map.set(key, value);
    },
    delete: async (key) => {
      map.delete(key);
    },
    has: async (key) => map.has(key),
    keys: async (prefix) => [...map.keys()].filter((key) => prefix === undefined || key.startsWith(prefix)),
  };
}

export interface RecordingLogger extends Logger {
  readonly lines: Array<{ level: keyof Logger; message: string }>;
  at(level: keyof Logger): string[];
}

export function recordingLogger(): RecordingLogger {
  const lines: Array<{ level: keyof Logger; message: string }> = [];
  const record = (level: keyof Logger) => (message: string) => {
    lines.push({ level, message });
  };
  return {
    lines,
    at: (level) => lines.filter((line) => line.level === level).map((line) => line.message),
    debug: record("debug"),
    info: record("info"),
    warn: record("warn"),
    error: record("error"),
  };
}

export interface Deferred<T> {
  readonly promise: Promise<T>;
  resolve(value: T): void;
  reject(error: unknown): void;
}

export function deferred<T>(): Deferred<T> {
  let resolve!: (value: T) => void;
  let reject!: (error: unknown) => void;
  const promise = new Promise<T>((res, rej) => {
    resolve = res;
    reject = rej;
  });
  return { promise, resolve, reject };
}

/** One full turn of the event loop: lets Node report unhandled rejections. Not a timed sleep. */
export function nextMacrotask(): Promise<void> {
  return new Promise((resolve) => setImmediate(resolve));
}
