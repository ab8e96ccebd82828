#!/usr/bin/env node
/**
 * `npm test` and `npm run test:all`: run every part, even after one fails, then say which
 * failed and exit 1 if any did. (Chaining the parts with `&&` skipped the later parts
 * after the first failure, so a failure hid whether the rest passed.)
 *
 *   node scripts/run-tests.mjs          the suite, then the fallback pass (`npm test`)
 *   node scripts/run-tests.mjs --all    also the install test, last and alone (`npm run test:all`)
 *
 * The parts are npm scripts of package.json, so each can also be run by itself.
 */
import { spawnSync } from "node:child_process";
import path from "node:path";
import { fileURLToPath } from "node:url";

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..");
const all = process.argv.includes("--all");
const unknown = process.argv.slice(2).filter((a) => a !== "--all");
if (unknown.length > 0) {
  console.error(`run-tests: unknown argument ${unknown[0]} (only --all); to run some test files: npx vitest run <files>`);
  process.exit(2);
}

const parts = [
  { script: "test:suite", what: "the suite" },
  { script: "test:fallback", what: "the fallback pass (KVKEEP_NO_NATIVE=1)" },
  ...(all ? [{ script: "test:install", what: "the install test" }] : []),
];

const npm = process.env.npm_execpath;
const results = [];
for (const part of parts) {
  console.log(`\n== npm run ${part.script}: ${part.what}\n`);
  const started = Date.now();
  const r = npm
    ? spawnSync(process.execPath, [npm, "run", part.script], { cwd: root, stdio: "inherit" })
    : spawnSync("npm", ["run", part.script], { cwd: root, stdio: "inherit", shell: process.platform === "win32" });
  results.push({ ...part, ok: r.status === 0, seconds: (Date.now() - started) / 1000, status: r.status ?? r.signal });
}

console.log("\n== summary");
for (const r of results) console.log(`${r.ok ? "passed" : "FAILED"}  npm run ${r.script}  (${r.seconds.toFixed(0)} s${r.ok ? "" : `, exit ${r.status}`})`);
const failed = results.filter((r) => !r.ok);
if (failed.length > 0) {
  console.log(`${failed.length} of ${results.length} parts failed: ${failed.map((r) => r.script).join(", ")}`);
  process.exit(1);
}
if (!all) console.log("(the install test is not part of `npm test`: `npm run test:install`, or `npm run test:all` for everything)");
