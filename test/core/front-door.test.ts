/**
 * The library's front door: options and arguments a new user gets wrong are refused with
 * a KvKeepError that names them (never a raw TypeError, never silently ignored), and the
 * messages for what the platform refuses say what is really wrong.
 */
import { promises as fs } from "node:fs";
import path from "node:path";
import { afterEach, describe, expect, it } from "vitest";
import { decideCachedHistorySlice, generateConfigHash, isKvKeepError, openKvCacheStore } from "../../src/index.js";
import { assertSafeComponent } from "../../src/keys/safe-key.js";
import { countingPrime, customTurn } from "../helpers/fake-engine.js";
import { mountTmpfs, type Tmpfs } from "../helpers/read-only.js";
import { tempDir } from "../helpers/temp-root.js";

function thrown(fn: () => unknown): unknown {
  try {
    fn();
  } catch (error) {
    return error;
  }
  throw new Error("did not throw");
}

describe("openKvCacheStore options", () => {
  it("an unknown option is INVALID_ARGUMENT naming it, with the closest valid name for a typo", () => {
    const error = thrown(() => openKvCacheStore({ root: tempDir(), maxByte: 1024 } as never));
    expect(isKvKeepError(error, "INVALID_ARGUMENT")).toBe(true);
    expect(error).toMatchObject({ argument: "maxByte", message: expect.stringContaining('unknown store option "maxByte" (did you mean "maxBytes"?)') });
    expect(thrown(() => openKvCacheStore({ root: tempDir(), onRollbak: "clear" } as never))).toMatchObject({
      argument: "onRollbak",
      message: expect.stringContaining('"onRollback"'),
    });
    const unrelated = thrown(() => openKvCacheStore({ root: tempDir(), colour: "red" } as never)) as Error;
    expect(unrelated.message).not.toContain("did you mean");
    expect(unrelated.message).toContain("maxBytes"); // lists the valid ones
    expect(thrown(() => openKvCacheStore("/tmp/x" as never))).toMatchObject({ code: "INVALID_ARGUMENT", argument: "options" });
  });

  it("a logger that is not a logger is INVALID_ARGUMENT, not a TypeError at the first log line", () => {
    expect(thrown(() => openKvCacheStore({ root: tempDir(), logger: "yes" as never }))).toMatchObject({
      code: "INVALID_ARGUMENT",
      argument: "logger",
      message: expect.stringContaining("got string"),
    });
    expect(thrown(() => openKvCacheStore({ root: tempDir(), logger: { warn: () => {} } as never }))).toMatchObject({
      code: "INVALID_ARGUMENT",
      message: expect.stringContaining("it lacks debug, info, error"),
    });
    const quiet = { debug: () => {}, info: () => {}, warn: () => {}, error: () => {} };
    const store = openKvCacheStore({ root: tempDir(), logger: quiet });
    return store.close();
  });
});

describe("decideCachedHistorySlice arguments", () => {
  it("a history that is not an array of messages is INVALID_ARGUMENT naming it", () => {
    expect(thrown(() => decideCachedHistorySlice(0, true, null as never))).toMatchObject({ code: "INVALID_ARGUMENT", argument: "history" });
    expect(thrown(() => decideCachedHistorySlice(0, true, [null] as never))).toMatchObject({
      code: "INVALID_ARGUMENT",
      argument: "history",
      message: expect.stringContaining("history[0]"),
    });
    expect(thrown(() => decideCachedHistorySlice("2" as never, true, []))).toMatchObject({ code: "INVALID_ARGUMENT", argument: "savedCount" });
    expect(thrown(() => decideCachedHistorySlice(2, "yes" as never, []))).toMatchObject({ code: "INVALID_ARGUMENT", argument: "cacheExists" });
  });
});

describe("keys across platforms", () => {
  it('"u:42" is an ordinary key on Linux and macOS: a turn commits under <root>/u:42/', async () => {
    const root = tempDir();
    const store = openKvCacheStore({ root });
    const turn = await customTurn(store.createSession("m"), "u:42", generateConfigHash("s"), 2);
    expect(path.relative(root, turn.cachePath).split(path.sep)[0]).toBe("u:42");
    await fs.stat(turn.cachePath);
    await store.close();
  });

  it("a drive-letter prefix is refused as absolute on Windows only; real absolute paths everywhere", () => {
    expect(thrown(() => assertSafeComponent("u:42", "customKey", "win32"))).toMatchObject({ code: "KEY_ABSOLUTE" });
    expect(() => assertSafeComponent("u:42", "customKey", "linux")).not.toThrow();
    expect(thrown(() => assertSafeComponent("C:\\x", "customKey", "linux"))).toMatchObject({ code: "KEY_ABSOLUTE" });
    expect(thrown(() => assertSafeComponent("/etc", "customKey", "linux"))).toMatchObject({ code: "KEY_ABSOLUTE" });
  });
});

describe("a read-only root", () => {
  let mounted: Tmpfs | null = null;
  afterEach(() => {
    mounted?.unmount();
    mounted = null;
  });

  it("a new key says EROFS (read-only file system), not ENOENT from mkdir", async (ctx) => {
    const result = mountTmpfs();
    if ("skip" in result) {
      console.warn(`SKIPPED: ${result.skip}`);
      return ctx.skip(result.skip);
    }
    mounted = result;
    const root = path.join(result.dir, "root");
    await fs.mkdir(root);
    result.setReadOnly(true);
    const store = openKvCacheStore({ root });
    const prime = countingPrime();
    const error = await store
      .createSession("m")
      .beginTurn({ kind: "custom", customKey: "chat", configHash: generateConfigHash("s"), primeIfMissing: prime })
      .catch((e: unknown) => e);
    await store.close();
    expect(error).toMatchObject({ code: "IO_ERROR", message: expect.stringContaining("read-only file system (EROFS)") });
    expect((error as Error).message).not.toContain("ENOENT");
    expect(prime.calls).toEqual([]);
  });
});
