/**
 * scripts/run-tests.mjs (`npm test`, `npm run test:all`): every part runs even after one
 * fails, the summary names the failed ones, and the exit status is 1 if any failed. Run in
 * a scratch package whose parts are tiny scripts that fail or pass on demand.
 */
import { spawnSync } from "node:child_process";
import { cpSync, mkdirSync, readFileSync, writeFileSync } from "node:fs";
import path from "node:path";
import { describe, expect, it } from "vitest";
import { tempDir } from "../helpers/temp-root.js";

const repoRoot = path.resolve(import.meta.dirname, "..", "..");

function scratch(parts: Record<"test:suite" | "test:fallback" | "test:install", "pass" | "fail">): string {
  const dir = tempDir();
  mkdirSync(path.join(dir, "scripts"));
  cpSync(path.join(repoRoot, "scripts", "run-tests.mjs"), path.join(dir, "scripts", "run-tests.mjs"));
  const scripts: Record<string, string> = {};
  for (const [name, outcome] of Object.entries(parts)) {
    scripts[name] = `node -e "require('fs').appendFileSync('ran.txt', '${name}\\n'); process.exit(${outcome === "fail" ? 3 : 0})"`;
  }
  writeFileSync(path.join(dir, "package.json"), JSON.stringify({ name: "scratch", private: true, scripts }));
  return dir;
}

function run(dir: string, args: string[] = []) {
  const r = spawnSync(process.execPath, [path.join(dir, "scripts", "run-tests.mjs"), ...args], { cwd: dir, encoding: "utf8", env: { ...process.env, npm_execpath: "" } });
  let ran = "";
  try {
    ran = readFileSync(path.join(dir, "ran.txt"), "utf8");
  } catch {
    // nothing ran
  }
  return { status: r.status, stdout: r.stdout, ran: ran.trim().split("\n").filter(Boolean) };
}

describe("scripts/run-tests.mjs", () => {
  it("a failing suite does not skip the fallback pass; the summary names it and the exit status is 1", () => {
    const r = run(scratch({ "test:suite": "fail", "test:fallback": "pass", "test:install": "pass" }));
    expect(r.ran).toEqual(["test:suite", "test:fallback"]);
    expect(r.status).toBe(1);
    expect(r.stdout).toMatch(/FAILED\s+npm run test:suite/);
    expect(r.stdout).toMatch(/passed\s+npm run test:fallback/);
    expect(r.stdout).toContain("1 of 2 parts failed: test:suite");
  });

  it("--all runs the install test last, after earlier failures too", () => {
    const r = run(scratch({ "test:suite": "pass", "test:fallback": "fail", "test:install": "pass" }), ["--all"]);
    expect(r.ran).toEqual(["test:suite", "test:fallback", "test:install"]);
    expect(r.status).toBe(1);
    expect(r.stdout).toContain("1 of 3 parts failed: test:fallback");
  });

  it("exits 0 when every part passed, and says the install test was not run", () => {
    const r = run(scratch({ "test:suite": "pass", "test:fallback": "pass", "test:install": "fail" }));
    expect(r.ran).toEqual(["test:suite", "test:fallback"]);
    expect(r.status).toBe(0);
    expect(r.stdout).toContain("npm run test:install");
  });

  it("refuses an unknown argument with exit 2, running nothing", () => {
    const r = run(scratch({ "test:suite": "pass", "test:fallback": "pass", "test:install": "pass" }), ["--al"]);
    expect(r.status).toBe(2);
    expect(r.ran).toEqual([]);
  });
});
