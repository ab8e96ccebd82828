import { spawnSync } from "node:child_process";
import { existsSync } from "node:fs";
import path from "node:path";
import { afterAll, afterEach, describe, expect, it } from "vitest";
import type { Logger } from "../../src/logger.js";
import { loadBindingFrom, NATIVE_ABI } from "../../src/native/binding.js";
import { loadNativeFs, resetNativeFsForTest } from "../../src/native/index.js";
import { findPackageRoot, localBuildPaths, nativeCandidates, prebuiltPath } from "../../src/native/paths.js";
import { nativeSkipped, nativeSuiteName, repoRoot, seededBytes, TempDirs } from "./helpers.js";

const temp = new TempDirs();
afterAll(() => temp.cleanup());

function recordingLogger(): Logger & { warnings: string[]; debugs: string[] } {
  const warnings: string[] = [];
  const debugs: string[] = [];
  return {
    warnings,
    debugs,
    debug: (m) => debugs.push(m),
    info: () => {},
    warn: (m) => warnings.push(m),
    error: () => {},
  };
}

const savedFlag = process.env.KVKEEP_NO_NATIVE;
afterEach(() => {
  if (savedFlag === undefined) delete process.env.KVKEEP_NO_NATIVE;
  else process.env.KVKEEP_NO_NATIVE = savedFlag;
  resetNativeFsForTest();
});

describe("backend selection", () => {
  it("KVKEEP_NO_NATIVE=1 selects the JS fallback, which says once what it lacks and how to fix it", () => {
    process.env.KVKEEP_NO_NATIVE = "1";
    resetNativeFsForTest();
    const logger = recordingLogger();
    const fs = loadNativeFs(logger);
    expect(fs.kind).toBe("js-fallback");
    expect(fs.crossProcessLocks).toBe(false);
    expect(fs.binaryPath).toBeNull();
    expect(loadNativeFs(logger)).toBe(fs); // memoised
    loadNativeFs(logger);
    loadNativeFs(recordingLogger());
    expect(logger.warnings).toHaveLength(1);
    const [warning] = logger.warnings;
    expect(warning).toMatch(/^kvkeep: /);
    expect(warning).toContain("KVKEEP_NO_NATIVE");
    expect(warning).toMatch(/cross-process/);
    expect(warning).toMatch(/build:native|scripts\/install\.mjs --build/);
    expect(warning).not.toContain("npm rebuild");
  });

  it("the fallback warning goes to the first logger given, even if an earlier call had none", () => {
    process.env.KVKEEP_NO_NATIVE = "1";
    resetNativeFsForTest();
    loadNativeFs();
    const logger = recordingLogger();
    loadNativeFs(logger);
    loadNativeFs(logger);
    expect(logger.warnings).toHaveLength(1);
  });

  it("resetNativeFsForTest makes the next call choose again", () => {
    process.env.KVKEEP_NO_NATIVE = "1";
    resetNativeFsForTest();
    const first = loadNativeFs();
    resetNativeFsForTest();
    expect(loadNativeFs()).not.toBe(first);
  });

  it("a child process started with KVKEEP_NO_NATIVE=1 runs on the fallback and warns exactly once", () => {
    const script = `
      import { loadNativeFs } from "./src/native/index.ts";
      const warnings = [];
      const logger = { debug() {}, info() {}, warn: (m) => warnings.push(m), error() {} };
      const fs = loadNativeFs(logger);
      loadNativeFs(logger);
      const lock = fs.tryLockFile(process.argv[1], "exclusive");
      console.log(JSON.stringify({ kind: fs.kind, crossProcessLocks: fs.crossProcessLocks, binaryPath: fs.binaryPath, warnings: warnings.length, locked: lock !== null, second: fs.tryLockFile(process.argv[1], "exclusive") === null }));
    `;
    const lockFile = path.join(temp.make(), "child.lock");
    const result = spawnSync(process.execPath, ["--import", "tsx", "--input-type=module", "-e", script, lockFile], {
      cwd: repoRoot,
      env: { ...process.env, KVKEEP_NO_NATIVE: "1" },
      encoding: "utf8",
    });
    expect(result.status, result.stderr).toBe(0);
    expect(JSON.parse(result.stdout.trim())).toEqual({
      kind: "js-fallback",
      crossProcessLocks: false,
      binaryPath: null,
      warnings: 1,
      locked: true,
      second: true,
    });
  });
});

describe.skipIf(nativeSkipped)(nativeSuiteName("native addon loading"), () => {
  it("without KVKEEP_NO_NATIVE the addon is chosen, locks cross processes, and nothing is warned", () => {
    delete process.env.KVKEEP_NO_NATIVE;
    resetNativeFsForTest();
    const logger = recordingLogger();
    const fs = loadNativeFs(logger);
    expect(["prebuilt", "local-build"]).toContain(fs.kind);
    expect(fs.crossProcessLocks).toBe(true);
    expect(fs.binaryPath).not.toBeNull();
    expect(path.isAbsolute(fs.binaryPath!)).toBe(true);
    expect(existsSync(fs.binaryPath!)).toBe(true);
    expect(logger.warnings).toEqual([]);
    expect(logger.debugs.join("\n")).toContain(fs.binaryPath!);
  });

  it("looks for the prebuilt binary first, then the cmake-js and node-gyp outputs", () => {
    const root = findPackageRoot();
    expect(root).toBe(repoRoot);
    expect(prebuiltPath(root!)).toBe(path.join(repoRoot, "prebuilds", `${process.platform}-${process.arch}`, "kvkeep.node"));
    expect(localBuildPaths(root!)).toEqual([
      path.join(repoRoot, "build-cmake", "Release", "kvkeep.node"),
      path.join(repoRoot, "build", "Release", "kvkeep.node"),
    ]);
    const candidates = nativeCandidates(root);
    expect(candidates.length).toBeGreaterThan(0);
    const firstLocal = candidates.findIndex((c) => c.kind === "local-build");
    const prebuilt = candidates.findIndex((c) => c.kind === "prebuilt");
    if (prebuilt !== -1) expect(prebuilt).toBeLessThan(firstLocal === -1 ? Infinity : firstLocal);
  });

  it("every local build present (cmake-js and/or node-gyp) loads, has this ABI and hashes identically", () => {
    const present = localBuildPaths(repoRoot).filter((file) => existsSync(file));
    expect(present.length, "no local build: run npm run build:native or build:native:gyp").toBeGreaterThan(0);
    const bytes = seededBytes(1000, 9);
    const hashes = present.map((file) => {
      const binding = loadBindingFrom(file);
      expect(binding.abi).toBe(NATIVE_ABI);
      return binding.xxh64(bytes, 5n);
    });
    expect(new Set(hashes).size).toBe(1);
  });
});
