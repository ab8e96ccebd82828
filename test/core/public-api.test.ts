/**
 * The package's public names are exactly those docs/api.md documents: every entry point of
 * package.json `exports` has a `## \`<entry>\`` section whose `| name | kind | what |` tables
 * list each value it exports (kind function, class, constant, object) and each type (kind
 * type) — nothing more, nothing less — so a name cannot be added, moved or dropped without
 * the page saying so. The package root stays small (≤ 30 values, issue 21), and an entry the
 * page says runs under Bare has a `bare` condition and a Bare build.
 */
import { readFileSync } from "node:fs";
import path from "node:path";
import ts from "typescript";
import { describe, expect, it } from "vitest";
import { BARE_ENTRIES } from "../../scripts/build-bare.js";

const repoRoot = path.resolve(import.meta.dirname, "..", "..");
const VALUE_KINDS = new Set(["function", "class", "constant", "object"]);

interface DocumentedEntry {
  values: string[];
  types: string[];
}

/** Split a markdown table row into its cells (a `\|` inside a cell is not a separator). */
function cells(row: string): string[] {
  return row
    .trim()
    .replace(/^\|/, "")
    .replace(/\|$/, "")
    .split(/(?<!\\)\|/)
    .map((c) => c.trim());
}

/** What docs/api.md documents, per entry point. */
function documented(): { entries: Map<string, DocumentedEntry>; runtimes: Map<string, { bare: boolean }> } {
  const lines = readFileSync(path.join(repoRoot, "docs", "api.md"), "utf8").split("\n");
  const entries = new Map<string, DocumentedEntry>();
  const runtimes = new Map<string, { bare: boolean }>();
  let section: string | null = null;
  for (let i = 0; i < lines.length; i++) {
    const heading = /^## `([^`]+)`\s*$/.exec(lines[i]!);
    if (heading) {
      section = heading[1]!;
      if (entries.has(section)) throw new Error(`docs/api.md has two sections for ${section}`);
      entries.set(section, { values: [], types: [] });
      continue;
    }
    if (/^## /.test(lines[i]!)) section = null;
    const header = cells(lines[i]!).join("|");
    if (header === "entry point|what|Node|Bare") {
      for (i += 2; i < lines.length && lines[i]!.startsWith("|"); i++) {
        const [entry, , , bare] = cells(lines[i]!);
        runtimes.set(/^`([^`]+)`$/.exec(entry!)![1]!, { bare: bare === "yes" });
      }
      continue;
    }
    if (header !== "name|kind|what") continue;
    if (section === null) throw new Error(`docs/api.md: a name table outside an entry point's section (line ${i + 1})`);
    for (i += 2; i < lines.length && lines[i]!.startsWith("|"); i++) {
      const [names, kind] = cells(lines[i]!);
      const list = [...names!.matchAll(/`([^`]+)`/g)].map((m) => m[1]!);
      if (list.length === 0 || !(VALUE_KINDS.has(kind!) || kind === "type")) {
        throw new Error(`docs/api.md line ${i + 1}: a row needs backticked names and a kind (function, class, constant, object, type)`);
      }
      entries.get(section)![kind === "type" ? "types" : "values"].push(...list);
    }
  }
  return { entries, runtimes };
}

interface PackageExport {
  types: string;
  import: string;
  bare?: string;
}

/** package.json `exports`: entry point → its conditions, without `./package.json`. */
function packageExports(): Map<string, PackageExport> {
  const pkg = JSON.parse(readFileSync(path.join(repoRoot, "package.json"), "utf8")) as { exports: Record<string, PackageExport | string> };
  const result = new Map<string, PackageExport>();
  for (const [key, target] of Object.entries(pkg.exports)) {
    if (key === "./package.json") continue;
    result.set(key === "." ? "kvkeep" : `kvkeep/${key.slice(2)}`, target as PackageExport);
  }
  return result;
}

/** The source an entry point is built from: dist/X.js ← src/X.ts. */
function sourceOf(target: PackageExport): string {
  const match = /^\.\/dist\/(.+)\.js$/.exec(target.import);
  if (!match) throw new Error(`an export's import target is not under dist/: ${target.import}`);
  return path.join(repoRoot, "src", `${match[1]}.ts`);
}

/** What a source module exports, values and types apart, as TypeScript sees it. */
function exportsOf(sources: string[]): Map<string, { values: string[]; types: string[] }> {
  const program = ts.createProgram(sources, {
    module: ts.ModuleKind.NodeNext,
    moduleResolution: ts.ModuleResolutionKind.NodeNext,
    target: ts.ScriptTarget.ES2022,
    strict: true,
    skipLibCheck: true,
    noEmit: true,
  });
  const checker = program.getTypeChecker();
  const result = new Map<string, { values: string[]; types: string[] }>();
  for (const source of sources) {
    const module = checker.getSymbolAtLocation(program.getSourceFile(source)!)!;
    const values: string[] = [];
    const types: string[] = [];
    for (const symbol of checker.getExportsOfModule(module)) {
      const target = symbol.flags & ts.SymbolFlags.Alias ? checker.getAliasedSymbol(symbol) : symbol;
      (target.flags & ts.SymbolFlags.Value ? values : types).push(symbol.name);
    }
    result.set(source, { values: values.sort(), types: types.sort() });
  }
  return result;
}

const sorted = (names: string[]): string[] => [...names].sort();

describe("the public API is exactly what docs/api.md documents", () => {
  const { entries, runtimes } = documented();
  const exported = packageExports();
  const actual = exportsOf([...exported.values()].map(sourceOf));

  it("every entry point of package.json has a section, and every section is an entry point", () => {
    expect(sorted([...entries.keys()])).toEqual(sorted([...exported.keys()]));
    expect(sorted([...runtimes.keys()])).toEqual(sorted([...exported.keys()]));
  });

  it.each([...exported.keys()])("%s: the values and types it exports are those its section lists, each once", (entry) => {
    const doc = entries.get(entry)!;
    const names = [...doc.values, ...doc.types];
    expect(names.filter((n, i) => names.indexOf(n) !== i), "listed twice").toEqual([]);
    const source = actual.get(sourceOf(exported.get(entry)!))!;
    expect(sorted(doc.values), "values").toEqual(source.values);
    expect(sorted(doc.types), "types").toEqual(source.types);
  });

  it("the package root exports at most 30 values, and what it exports at run time is what it documents", async () => {
    const root = await import("../../src/index.js");
    expect(sorted(Object.keys(root))).toEqual(sorted(entries.get("kvkeep")!.values));
    expect(Object.keys(root).length).toBeLessThanOrEqual(30);
  });

  it("an entry point documented to run under Bare has a bare condition and a Bare build of its source", () => {
    for (const [entry, { bare }] of runtimes) {
      const target = exported.get(entry)!;
      const built = Object.entries(BARE_ENTRIES).find(([, src]) => path.join(repoRoot, src) === sourceOf(target));
      if (bare) {
        expect(built, `${entry} is not in scripts/build-bare.ts BARE_ENTRIES`).toBeDefined();
        expect(target.bare, entry).toBe(`./dist/bare/${built![0]}.js`);
      } else {
        expect(target.bare, entry).toBeUndefined();
        expect(built, entry).toBeUndefined();
      }
    }
  });
});
