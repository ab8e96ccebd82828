import { lstat, mkdir, mkdtemp, readdir, readFile, rm, symlink, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { isKvKeepError } from "../../src/errors.js";
import { openKvCacheStore } from "../../src/index.js";
import {
  createCacheWarmer,
  createFileSettingsStorage,
  createStoreWarmer,
  parseSettings,
  SETTINGS_FILE_MAX_BYTES,
  settingsKey,
} from "../../src/warm/index.js";
import { fakeTimers, recordingLogger, USAGE } from "./helpers.js";

let root: string;
let dir: string;

beforeEach(async () => {
  root = await mkdtemp(join(tmpdir(), "kvkeep-warm-"));
  dir = join(root, "warm-settings");
});

afterEach(async () => {
  await rm(root, { recursive: true, force: true });
});

async function jsonFiles(): Promise<string[]> {
  return (await readdir(dir)).filter((name) => name.endsWith(".json"));
}

describe("createFileSettingsStorage", () => {
  it("round-trips values across instances on a real directory", async () => {
    const first = createFileSettingsStorage(dir);
    expect(await first.get("a")).toBeNull();
    expect(await first.keys()).toEqual([]); // the directory does not exist yet
    await first.set("a", "1");
    await first.set("b", '{"enabled":false}');
    await first.set("a", "2");

    const second = createFileSettingsStorage(dir);
    expect(await second.get("a")).toBe("2");
    expect(await second.get("b")).toBe('{"enabled":false}');
    expect(await second.has("a")).toBe(true);
    expect(await second.has("zzz")).toBe(false);
    expect(await second.keys()).toEqual(["a", "b"]);

    await second.delete("a");
    await second.delete("never-there"); // no-op
    expect(await createFileSettingsStorage(dir).get("a")).toBeNull();
    expect(await createFileSettingsStorage(dir).keys()).toEqual(["b"]);
  });

  it("filters keys by prefix", async () => {
    const storage = createFileSettingsStorage(dir);
    await storage.set("settings:x", "1");
    await storage.set("settings:y", "2");
    await storage.set("other", "3");
    expect(await storage.keys("settings:")).toEqual(["settings:x", "settings:y"]);
  });

  it("reads a corrupt file as absent (defaults), and a later set works", async () => {
    const logger = recordingLogger();
    const storage = createFileSettingsStorage(dir, { logger });
    await storage.set(settingsKey("conv-1"), '{"enabled":false,"intervalMs":5000}');
    const [file] = await jsonFiles();
    await writeFile(join(dir, file ?? "missing"), "{\u0000 torn wri");

    const fresh = createFileSettingsStorage(dir, { logger });
    expect(await fresh.get(settingsKey("conv-1"))).toBeNull();
    expect(parseSettings(await fresh.get(settingsKey("conv-1")))).toEqual({ enabled: true, intervalMs: 240_000 });
    expect(await fresh.keys()).toEqual([]);
    expect(logger.at("warn").some((m) => m.includes("corrupt"))).toBe(true);

    await fresh.set(settingsKey("conv-1"), '{"enabled":true,"intervalMs":2000}');
    expect(await createFileSettingsStorage(dir).get(settingsKey("conv-1"))).toBe('{"enabled":true,"intervalMs":2000}');
  });

  it("reads valid JSON of the wrong shape, or another key's content, as absent", async () => {
    const storage = createFileSettingsStorage(dir);
    await storage.set("a", "1");
    await storage.set("b", "2");
    const files = await jsonFiles();
    const [fileA, fileB] = files;
    const contentOfA = await readFile(join(dir, fileA ?? ""), "utf8");
    await writeFile(join(dir, fileB ?? ""), contentOfA); // a file under the wrong name
    await writeFile(join(dir, fileA ?? ""), JSON.stringify([1, 2, 3]));
    const fresh = createFileSettingsStorage(dir);
    expect(await fresh.get("a")).toBeNull();
    expect(await fresh.get("b")).toBeNull();
    expect(await fresh.keys()).toEqual([]);
  });

  it("reads a directory planted as a settings file as absent instead of throwing, and a set replaces it", async () => {
    const storage = createFileSettingsStorage(dir);
    await storage.set("a", "1");
    const [file] = await jsonFiles();
    await rm(join(dir, file ?? ""));
    await mkdir(join(dir, file ?? "", "inside"), { recursive: true }); // not a regular file
    expect(await createFileSettingsStorage(dir).get("a")).toBeNull();
    expect(await createFileSettingsStorage(dir).keys()).toEqual([]);
    await storage.set("a", "2");
    expect(await createFileSettingsStorage(dir).get("a")).toBe("2");
    await storage.delete("a");
    expect(await readdir(dir)).toEqual([]);
  });

  it("never follows a symlink at a settings file: its target is neither read nor written", async () => {
    const storage = createFileSettingsStorage(dir);
    await storage.set("a", "mine");
    const [file] = await jsonFiles();
    const elsewhere = join(root, "elsewhere.json");
    await writeFile(elsewhere, await readFile(join(dir, file!), "utf8")); // a valid record for "a", outside
    await rm(join(dir, file!));
    await symlink(elsewhere, join(dir, file!));
    expect(await storage.get("a")).toBeNull();
    expect(await storage.keys()).toEqual([]);
    await storage.set("a", "new");
    expect(await storage.get("a")).toBe("new");
    expect((await lstat(join(dir, file!))).isFile()).toBe(true); // the link was replaced, not written through
    expect(JSON.parse(await readFile(elsewhere, "utf8"))).toMatchObject({ key: "a", value: "mine" });
  });

  it("refuses a value whose file would exceed SETTINGS_FILE_MAX_BYTES, and reads a file over it as absent", async () => {
    const storage = createFileSettingsStorage(dir);
    const error = await storage.set("big", "x".repeat(SETTINGS_FILE_MAX_BYTES)).catch((e: unknown) => e);
    expect(isKvKeepError(error, "INVALID_ARGUMENT")).toBe(true);
    await storage.set("big", "x".repeat(SETTINGS_FILE_MAX_BYTES - 100)); // just fits
    expect(await storage.get("big")).toHaveLength(SETTINGS_FILE_MAX_BYTES - 100);
    // A valid record grown past the bound by another writer is not read.
    const [file] = await jsonFiles();
    await writeFile(join(dir, file!), JSON.stringify({ v: 1, key: "big", value: "y".repeat(SETTINGS_FILE_MAX_BYTES) }));
    expect(await createFileSettingsStorage(dir).get("big")).toBeNull();
  });

  it("a directory path that is a file reads as empty and fails writes with IO_ERROR", async () => {
    await mkdir(root, { recursive: true });
    await writeFile(dir, "not a directory");
    const storage = createFileSettingsStorage(dir);
    expect(await storage.get("a")).toBeNull();
    expect(await storage.keys()).toEqual([]);
    const error = await storage.set("a", "1").catch((e: unknown) => e);
    expect(isKvKeepError(error, "IO_ERROR")).toBe(true);
  });

  it("lands every one of many concurrent sets", async () => {
    const storage = createFileSettingsStorage(dir);
    const keys = Array.from({ length: 50 }, (_, i) => `settings:conv-${i}`);
    await Promise.all(keys.map((key, i) => storage.set(key, String(i))));
    const fresh = createFileSettingsStorage(dir);
    expect(await fresh.keys()).toEqual([...keys].sort());
    for (const [i, key] of keys.entries()) expect(await fresh.get(key)).toBe(String(i));
  });

  it("applies concurrent sets of one key in call order: the last call wins, no temp files left", async () => {
    const storage = createFileSettingsStorage(dir);
    const writes = Array.from({ length: 30 }, (_, i) => storage.set("k", `v${i}`));
    const read = storage.get("k"); // issued after the writes: sees the last one
    await Promise.all(writes);
    expect(await read).toBe("v29");
    expect(await createFileSettingsStorage(dir).get("k")).toBe("v29");
    expect(await readdir(dir)).toHaveLength(1);
  });

  it("keeps two instances' concurrent sets of different keys (one file per key)", async () => {
    const one = createFileSettingsStorage(dir);
    const two = createFileSettingsStorage(dir);
    await Promise.all([one.set("a", "from one"), two.set("b", "from two"), one.set("c", "x"), two.set("d", "y")]);
    expect(await createFileSettingsStorage(dir).keys()).toEqual(["a", "b", "c", "d"]);
  });

  it("takes any string as a key: slashes, dot segments, NUL, unicode, very long", async () => {
    const storage = createFileSettingsStorage(dir);
    const keys = [
      "settings:a/b/c",
      "../../escape",
      "/absolute/path",
      "with\u0000nul",
      "Case",
      "case",
      "ünïcødé 会話",
      "",
      "x".repeat(5_000),
    ];
    for (const [i, key] of keys.entries()) await storage.set(key, `value-${i}`);
    const fresh = createFileSettingsStorage(dir);
    for (const [i, key] of keys.entries()) expect(await fresh.get(key)).toBe(`value-${i}`);
    expect(await fresh.keys()).toEqual([...keys].sort());
    // Everything stayed inside the directory, one flat file per key.
    const names = await readdir(dir);
    expect(names).toHaveLength(keys.length);
    for (const name of names) expect(name).toMatch(/^[0-9a-f]{64}\.json$/);
    expect((await readdir(root)).sort()).toEqual(["warm-settings"]);
  });

  it("rejects a root that does not contain dir with INVALID_ARGUMENT", () => {
    expect(() => createFileSettingsStorage(dir, { root: join(root, "other") })).toThrow(expect.objectContaining({ code: "INVALID_ARGUMENT", argument: "root" }));
  });

  it("rejects non-string keys and values with INVALID_ARGUMENT", async () => {
    const storage = createFileSettingsStorage(dir);
    for (const attempt of [
      () => storage.set(1 as unknown as string, "v"),
      () => storage.set("k", { a: 1 } as unknown as string),
      () => storage.get(undefined as unknown as string),
    ]) {
      const error = await attempt().catch((e: unknown) => e);
      expect(isKvKeepError(error, "INVALID_ARGUMENT")).toBe(true);
    }
  });

  it("is what makes settings survive a restart of the warmer", async () => {
    const before = createCacheWarmer({ warm: async () => USAGE, storage: createFileSettingsStorage(dir), timers: fakeTimers() });
    await before.setEnabled("chat/1", false);
    await before.setIntervalMs("chat/2", 5_000);
    before.dispose();

    const timers = fakeTimers();
    const after = createCacheWarmer({ warm: async () => USAGE, storage: createFileSettingsStorage(dir), timers });
    after.onTurnSettled("chat/1", {});
    after.onTurnSettled("chat/2", {});
    await after.ready();
    expect(timers.pending().map((t) => t.ms)).toEqual([5_000]);
    expect(after.getState("chat/1")).toMatchObject({ enabled: false, armed: false });
    after.dispose();
  });

  it("gives a warmer defaults when its settings file is corrupt", async () => {
    const storage = createFileSettingsStorage(dir);
    await storage.set(settingsKey("conv-1"), '{"enabled":false}');
    const [file] = await jsonFiles();
    await writeFile(join(dir, file ?? ""), "garbage");
    const timers = fakeTimers();
    const warmer = createCacheWarmer({ warm: async () => USAGE, storage: createFileSettingsStorage(dir), timers });
    warmer.onTurnSettled("conv-1", {});
    await warmer.ready();
    expect(timers.pending().map((t) => t.ms)).toEqual([240_000]);
    await warmer.setIntervalMs("conv-1", 3_000);
    expect(await createFileSettingsStorage(dir).get(settingsKey("conv-1"))).toBe('{"enabled":true,"intervalMs":3000}');
  });
});

describe("createFileSettingsStorage below a root: a symlinked level redirects nothing", () => {
  /** Settings planted outside the root, where a symlinked level would lead: `<outside>/warm/<file>` with {enabled:false}. */
  async function plantOutside(): Promise<string> {
    const outside = join(root, "outside");
    await createFileSettingsStorage(join(outside, "warm")).set(settingsKey("conv-1"), '{"enabled":false,"intervalMs":5000}');
    return outside;
  }

  it.each([
    [".kvkeep", (store: string, outside: string) => symlink(outside, join(store, ".kvkeep"))],
    ["warm", async (store: string, outside: string) => {
      await mkdir(join(store, ".kvkeep"));
      await symlink(join(outside, "warm"), join(store, ".kvkeep", "warm"));
    }],
  ])("a symlink at <root>/%s: reads see no settings, writes and deletes are UNSAFE_PATH, nothing outside changes", async (_level, plant) => {
    const storeRoot = join(root, "store");
    await mkdir(storeRoot);
    const outside = await plantOutside();
    const before = await readdir(join(outside, "warm"));
    await plant(storeRoot, outside);
    const logger = recordingLogger();
    const storage = createFileSettingsStorage(join(storeRoot, ".kvkeep", "warm"), { root: storeRoot, logger });

    expect(await storage.get(settingsKey("conv-1"))).toBeNull();
    expect(await storage.keys()).toEqual([]);
    expect(logger.at("warn").some((m) => m.includes("not a plain directory"))).toBe(true);
    for (const write of [() => storage.set(settingsKey("conv-2"), "{}"), () => storage.delete(settingsKey("conv-1"))]) {
      const error = await write().catch((e: unknown) => e);
      expect(isKvKeepError(error, "UNSAFE_PATH")).toBe(true);
    }
    expect(await readdir(join(outside, "warm"))).toEqual(before);
  });

  it("creates <root>/.kvkeep/warm level by level when missing, and works as before", async () => {
    const storeRoot = join(root, "store");
    const storage = createFileSettingsStorage(join(storeRoot, ".kvkeep", "warm"), { root: storeRoot });
    expect(await storage.get("a")).toBeNull(); // nothing yet: no error, nothing created by a read
    await expect(readdir(storeRoot)).rejects.toMatchObject({ code: "ENOENT" });
    await storage.set("a", "1");
    expect(await createFileSettingsStorage(join(storeRoot, ".kvkeep", "warm"), { root: storeRoot }).get("a")).toBe("1");
    expect((await lstat(join(storeRoot, ".kvkeep"))).isDirectory()).toBe(true);
  });

  it("a store warmer on a root whose .kvkeep is a symlink gives the conversation defaults, not the planted settings", async () => {
    const storeRoot = join(root, "store");
    await mkdir(storeRoot);
    const outside = await plantOutside();
    await symlink(outside, join(storeRoot, ".kvkeep"));
    const store = openKvCacheStore({ root: storeRoot });
    const timers = fakeTimers();
    const warmer = createStoreWarmer(store, { timers, warm: async () => USAGE });
    warmer.onTurnSettled("conv-1", {});
    await warmer.ready();
    expect(warmer.getState("conv-1")).toMatchObject({ enabled: true, intervalMs: 240_000 });
    expect(timers.pending().map((t) => t.ms)).toEqual([240_000]);
    warmer.dispose();
    await store.close();
  });
});
