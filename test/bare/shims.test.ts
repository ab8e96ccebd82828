/**
 * The Bare build's stand-ins for Node builtins (src/platform/bare/) against Node itself:
 * the same fs calls, made as kvkeep makes them, give the same results under both runtimes —
 * exclusive creates that refuse (bare-fs's "wx" would truncate), no-follow opens that refuse
 * symlinks (bare-fs's O_NOFOLLOW is undefined), nanosecond identities equal to Node's (so a
 * commit from one runtime is recognised by the other), Node's mkdir/readdir/FileHandle
 * semantics, and the same SHA-256.
 */
import { mkdirSync, writeFileSync } from "node:fs";
import path from "node:path";
import { describe, expect, it } from "vitest";
import { sha256 } from "../../src/platform/bare/sha256.js";
import { createHash } from "node:crypto";
import { tempDir } from "../helpers/temp-root.js";
import { bareRuntimes, onBare } from "./helpers.js";
import { behaviour, identities } from "./fs-conformance.js";

describe("SHA-256 in plain JS (the Bare build's createHash)", () => {
  it("matches node:crypto on empty, block-boundary, multi-block and non-ASCII input", () => {
    const inputs = ["", "abc", "a".repeat(55), "a".repeat(56), "a".repeat(64), "x".repeat(1000), "kvkeep ✓ ünïcode 🚀"];
    for (let n = 0; n < 40; n++) inputs.push(String.fromCharCode(...Array.from({ length: n * 7 }, (_, i) => (i * 31 + n) % 256)));
    for (const input of inputs) {
      const bytes = Buffer.from(input, "utf8");
      expect(Buffer.from(sha256(bytes)).toString("hex")).toBe(createHash("sha256").update(bytes).digest("hex"));
    }
  });
});

describe.each(bareRuntimes())("node:fs as kvkeep uses it: Bare $version shims against Node", (runtime) => {
  const { runBare } = onBare(runtime);

  it("behave as Node's: refusals, no-follow, mkdir/readdir/FileHandle semantics, hashing", async () => {
    const root = tempDir();
    const nodeDir = path.join(root, "node");
    const bareDir = path.join(root, "bare");
    mkdirSync(nodeDir);
    mkdirSync(bareDir);
    const fromNode = await behaviour(nodeDir);
    const { status, lines, stderr } = await runBare("fs-conformance-worker.mjs", { dir: bareDir, files: [] });
    expect(stderr).toBe("");
    expect(status).toBe(0);
    expect(lines[0]!.behaviour).toEqual(fromNode);
    // The refusals are real refusals (not a shared mistake).
    expect(fromNode).toMatchObject({ wxExisting: "error:EEXIST", wxKeptContent: "ok:first", nofollowOnLink: "error:ELOOP", appendNofollowOnLink: "error:ELOOP" });
  });

  it("report the identity Node reports (size, inode, mtime in ns) for the same files", async () => {
    const root = tempDir();
    const files = ["small", "empty", "big"].map((n) => path.join(root, n));
    writeFileSync(files[0]!, "kvkeep");
    writeFileSync(files[1]!, "");
    writeFileSync(files[2]!, Buffer.alloc(3 << 20, 7));
    const fromNode = await identities(files);
    const { status, lines } = await runBare("fs-conformance-worker.mjs", { dir: path.join(root, "unused"), files });
    expect(status).toBe(0);
    expect(lines[0]!.identities).toEqual(fromNode);
  });
});
