/**
 * The README is a front door to docs/: every relative link in README.md, ARCHITECTURE.md and
 * docs/*.md leads to a file of the repository and, with a `#fragment`, to a heading of that
 * file (GitHub's anchors) — so moving a section or a file cannot leave a reader at a dead end.
 */
import { existsSync, readdirSync, readFileSync } from "node:fs";
import path from "node:path";
import { describe, expect, it } from "vitest";

const repoRoot = path.resolve(import.meta.dirname, "..", "..");
const pages = ["README.md", "ARCHITECTURE.md", ...readdirSync(path.join(repoRoot, "docs")).filter((n) => n.endsWith(".md")).map((n) => `docs/${n}`)];

/** Markdown without its fenced code blocks (a link-like text in code is not a link). */
function prose(text: string): string {
  return text.replace(/^```[\s\S]*?^```/gm, "");
}

/** GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens. */
function anchor(heading: string): string {
  return heading
    .trim()
    .toLowerCase()
    .replace(/[^\p{L}\p{N}\s_-]/gu, "")
    .replace(/\s/g, "-");
}

function anchorsOf(file: string): Set<string> {
  const seen = new Map<string, number>();
  const result = new Set<string>();
  for (const match of prose(readFileSync(file, "utf8")).matchAll(/^#{1,6}\s+(.+)$/gm)) {
    const base = anchor(match[1]!);
    const n = seen.get(base) ?? 0;
    seen.set(base, n + 1);
    result.add(n === 0 ? base : `${base}-${n}`);
  }
  return result;
}

describe("links between the README and docs/", () => {
  it.each(pages)("%s: every relative link leads to a file, and every #fragment to a heading there", (page) => {
    const text = prose(readFileSync(path.join(repoRoot, page), "utf8"));
    const broken: string[] = [];
    for (const match of text.matchAll(/\]\(([^)\s]+)\)/g)) {
      const target = match[1]!;
      if (/^[a-z]+:/i.test(target)) continue; // https:, mailto:
      const [file, fragment] = target.split("#") as [string, string | undefined];
      const resolved = file === "" ? path.join(repoRoot, page) : path.resolve(path.dirname(path.join(repoRoot, page)), file);
      if (!existsSync(resolved)) {
        broken.push(`${target}: no such file`);
        continue;
      }
      if (fragment !== undefined && resolved.endsWith(".md") && !anchorsOf(resolved).has(fragment)) broken.push(`${target}: no such heading`);
    }
    expect(broken).toEqual([]);
  });
});
