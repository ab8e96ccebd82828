/**
 * The import rules (.dependency-cruiser.cjs, ARCHITECTURE.md "Layers") are part of `npm test`:
 * src/ keeps them, and the check fails on each kind of arrow they forbid — proven on a scratch
 * tree that breaks every rule once, so a rule that matches nothing cannot pass unnoticed.
 */
import { spawnSync } from "node:child_process";
import { mkdirSync, writeFileSync } from "node:fs";
import path from "node:path";
import { describe, expect, it } from "vitest";
import { tempDir } from "../helpers/temp-root.js";

const repoRoot = path.resolve(import.meta.dirname, "..", "..");
const cruiser = path.join(repoRoot, "node_modules", "dependency-cruiser", "bin", "dependency-cruise.mjs");
const config = path.join(repoRoot, ".dependency-cruiser.cjs");

interface Violation {
  rule: { name: string };
  from: string;
  to: string;
}

/**
 * The cruiser over `cwd`/src: `status` and `output` of its `err` reporter (what
 * `npm run test:imports` prints; it exits non-zero on a broken rule), and the violations its
 * JSON reporter lists.
 */
function cruise(cwd: string): { status: number | null; output: string; violations: Violation[] } {
  const run = (type: string) => spawnSync(process.execPath, [cruiser, "src", "--config", config, "--output-type", type], { cwd, encoding: "utf8" });
  const err = run("err");
  const json = run("json");
  let violations: Violation[] = [];
  try {
    violations = (JSON.parse(json.stdout) as { summary: { violations: Violation[] } }).summary.violations;
  } catch {
    // not JSON: the err reporter's output says why
  }
  return { status: err.status, output: `${err.stdout}\n${err.stderr}\n${json.stderr}`, violations };
}

describe("import rules (dependency-cruiser)", () => {
  it("src/ breaks none of them: no circle, no arrow up, no I/O in a pure layer", () => {
    const r = cruise(repoRoot);
    const broken = r.violations.map((v) => `${v.rule.name}: ${v.from} → ${v.to}`).join("\n");
    expect(broken, `npx depcruise src --config .dependency-cruiser.cjs says:\n${broken}`).toBe("");
    expect(r.status, r.output).toBe(0);
  });

  it("fails on a circle, an arrow up, a pure layer with fs, durable on manifest, an engine or the CLI past the store", () => {
    const dir = tempDir();
    const files: Record<string, string> = {
      "src/errors.ts": "export const x = 1;\n",
      "src/layout/paths.ts": 'import { readFileSync } from "node:fs";\nexport const p = readFileSync;\n',
      "src/manifest/format.ts": "export interface Manifest { n: number }\n",
      "src/durable/files.ts": 'import type { Manifest } from "../manifest/format.js";\nexport const f = (m: Manifest): number => m.n;\n',
      "src/session/session.ts": 'import { s } from "../store/store.js";\nexport const t = s;\n',
      "src/store/store.ts": 'import { t } from "../session/session.js";\nexport const s = 1;\nexport const u = t;\n',
      "src/store/a.ts": 'import { b } from "./b.js";\nexport const a = b;\n',
      "src/store/b.ts": 'import { a } from "./a.js";\nexport const b = () => a;\n',
      "src/engines/adapter.ts": 'import { f } from "../durable/files.js";\nexport const e = f;\n',
      "src/cli/view.ts": 'import type { Manifest } from "../manifest/format.js";\nexport type V = Manifest;\n',
    };
    for (const [file, text] of Object.entries(files)) {
      mkdirSync(path.dirname(path.join(dir, file)), { recursive: true });
      writeFileSync(path.join(dir, file), text);
    }
    writeFileSync(
      path.join(dir, "tsconfig.json"),
      JSON.stringify({ compilerOptions: { module: "NodeNext", moduleResolution: "NodeNext", strict: true, noEmit: true }, include: ["src"] }),
    );
    const r = cruise(dir);
    expect(r.status, r.output).not.toBe(0);
    const found = new Set(r.violations.map((v) => `${v.rule.name} ${v.from} → ${v.to}`));
    for (const expected of [
      "no-circular src/store/a.ts → src/store/b.ts",
      "down-only-store src/store/store.ts → src/session/session.ts",
      "pure-without-io src/layout/paths.ts → fs",
      "durable-without-manifest src/durable/files.ts → src/manifest/format.ts",
      "engines-ask-the-store src/engines/adapter.ts → src/durable/files.ts",
      "cli-reads-through-the-store src/cli/view.ts → src/manifest/format.ts",
    ]) {
      expect([...found], r.output).toContain(expected);
    }
  });
});
