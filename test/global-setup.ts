/**
 * Vitest global setup: the CLI and install tests run the BUILT package (dist/), as users
 * do. Build it once before any test when it is missing or older than a source file, so a
 * test never checks stale code. (`npm run build` before `npm test`, as CI does, makes this a no-op.)
 */
import { spawnSync } from "node:child_process";
import { readdirSync, statSync } from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";

const repoRoot = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..");

function newestMtime(dir: string): number {
  let newest = 0;
  for (const entry of readdirSync(dir, { withFileTypes: true })) {
    const full = path.join(dir, entry.name);
    newest = Math.max(newest, entry.isDirectory() ? newestMtime(full) : statSync(full).mtimeMs);
  }
  return newest;
}

function builtMtime(): number {
  try {
    return Math.min(...["dist/index.js", "dist/cli/bin.js", "dist/index.d.ts"].map((f) => statSync(path.join(repoRoot, f)).mtimeMs));
  } catch {
    return -1;
  }
}

export default function setup(): void {
  const sources = Math.max(
    newestMtime(path.join(repoRoot, "src")),
    ...["package.json", "tsup.config.ts"].map((f) => statSync(path.join(repoRoot, f)).mtimeMs),
  );
  if (builtMtime() >= sources) return;
  const result = spawnSync("npm", ["run", "build"], { cwd: repoRoot, encoding: "utf8" });
  if (result.status !== 0) throw new Error(`npm run build failed before the tests:\n${result.stdout}\n${result.stderr}`);
}
