/**
 * The Bare build of kvkeep (dist/bare/), selected by the `bare` condition of package.json
 * `exports`. The same sources as the Node build, bundled with esbuild, with:
 *
 * - every `node:` builtin mapped at build time to what stands for it under Bare: kvkeep's
 *   own shims in src/platform/bare/ (fs, fs/promises, crypto, module) or a bare-* package
 *   with Node's API (path, os, url). A builtin without a mapping fails the build, so new
 *   Node-only code cannot reach Bare users as a runtime MODULE_NOT_FOUND;
 * - `process`, `TextEncoder`, `AbortController` and `performance` (globals Bare lacks) bound to the exports
 *   of src/platform/bare/globals.ts (esbuild `inject`) — no global is patched;
 * - the bare-* packages left external (resolved from the app's node_modules; they are
 *   kvkeep's optionalDependencies), everything else bundled.
 *
 *   npx tsx scripts/build-bare.ts [outdir]     (npm run build runs it after tsup)
 */
import { build, type BuildResult, type Plugin } from "esbuild";
import { rmSync } from "node:fs";
import path from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";

const repoRoot = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..");
const shim = (name: string): string => path.join(repoRoot, "src", "platform", "bare", name);

/** Where each builtin kvkeep imports comes from under Bare. */
export const BARE_BUILTINS: Readonly<Record<string, { shim: string } | { package: string }>> = {
  "node:fs": { shim: shim("fs.ts") },
  "node:fs/promises": { shim: shim("fs-promises.ts") },
  "node:crypto": { shim: shim("crypto.ts") },
  "node:module": { shim: shim("module.ts") },
  "node:path": { package: "bare-path" },
  "node:os": { package: "bare-os" },
  "node:url": { package: "bare-url" },
};

/** The package entry points built for Bare (relative to dist/bare). */
export const BARE_ENTRIES: Readonly<Record<string, string>> = {
  index: "src/index.ts",
  "engines/qvac/index": "src/engines/qvac/index.ts",
  "warm/index": "src/warm/index.ts",
  "keys/index": "src/keys/index.ts",
};

const builtinsPlugin: Plugin = {
  name: "kvkeep-bare-builtins",
  setup(b) {
    b.onResolve({ filter: /^node:/ }, (args) => {
      const target = BARE_BUILTINS[args.path];
      if (!target) {
        return {
          errors: [
            {
              text: `${args.path} (imported by ${path.relative(repoRoot, args.importer)}) has no Bare counterpart: map it in scripts/build-bare.ts, with a shim in src/platform/bare/ if bare-* has no Node-compatible package`,
            },
          ],
        };
      }
      return "shim" in target ? { path: target.shim } : { path: target.package, external: true };
    });
  },
};

/**
 * Build `entries` (output name → source, relative to the repo) for Bare into `outdir`,
 * which is emptied first. Tests build their own probes with the same mapping.
 */
export async function buildBare(
  outdir: string = path.join(repoRoot, "dist", "bare"),
  entries: Readonly<Record<string, string>> = BARE_ENTRIES,
): Promise<BuildResult> {
  rmSync(outdir, { recursive: true, force: true }); // chunk names change with content
  return build({
    absWorkingDir: repoRoot,
    entryPoints: Object.fromEntries(Object.entries(entries).map(([out, src]) => [out, path.join(repoRoot, src)])),
    outdir,
    bundle: true,
    splitting: true,
    format: "esm",
    platform: "neutral",
    target: "es2022",
    conditions: ["bare", "import"],
    mainFields: ["module", "main"],
    external: ["bare-*"],
    inject: [shim("globals.ts")],
    plugins: [builtinsPlugin],
    sourcemap: true,
    logLevel: "warning",
  });
}

if (process.argv[1] && import.meta.url === pathToFileURL(path.resolve(process.argv[1])).href) {
  await buildBare(process.argv[2] ? path.resolve(process.argv[2]) : undefined);
}
