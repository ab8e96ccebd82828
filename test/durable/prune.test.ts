/**
 * Emptied directories are pruned only at the levels kvkeep makes (issue 20, item 2, with
 * scopes): the shared space's key and model directories, and `.scopes/`, a scope's space
 * `.scopes/<32 hex>/` and the key and model directories in it. Real directories; each case
 * starts from an empty leaf, the most a remover could leave behind.
 */
import { existsSync, promises as fs } from "node:fs";
import path from "node:path";
import { describe, expect, it } from "vitest";
import { pruneEmptyDirs } from "../../src/durable/files.js";
import { isOwnDirLevel } from "../../src/layout/paths.js";
import { scopeIdOf } from "../../src/keys/scope.js";
import { tempDir } from "../helpers/temp-root.js";

const id = scopeIdOf("tenant:alice");

/** Make `rel` (empty) under a fresh root, prune from it, and list which of its levels are left. */
async function pruneFrom(rel: string, plant: Record<string, string> = {}): Promise<string[]> {
  const root = tempDir();
  await fs.mkdir(path.join(root, rel), { recursive: true });
  for (const [file, text] of Object.entries(plant)) await fs.writeFile(path.join(root, file), text);
  await pruneEmptyDirs(root, path.join(root, rel), () => false);
  const parts = rel.split("/");
  return parts.map((_, i) => parts.slice(0, i + 1).join("/")).filter((level) => existsSync(path.join(root, level)));
}

describe("pruneEmptyDirs removes only kvkeep's own levels", () => {
  it("an emptied model directory takes its key directory with it, in the shared space and in a scope's (with the space and .scopes/)", async () => {
    expect(await pruneFrom("chat/qwen")).toEqual([]);
    expect(await pruneFrom(`.scopes/${id}/chat/qwen`)).toEqual([]);
  });

  it("stops at the first level that is not empty: a user's .scopes/notes.txt keeps .scopes/", async () => {
    expect(await pruneFrom(`.scopes/${id}/chat/qwen`, { ".scopes/notes.txt": "mine" })).toEqual([".scopes"]);
    expect(await pruneFrom(`.scopes/${id}/chat/qwen`, { [`.scopes/${id}/notes.txt`]: "mine" })).toEqual([".scopes", `.scopes/${id}`]);
  });

  it("removes nothing deeper than a model directory, under a .scopes/ name that is not a scope id, or in .kvkeep/", async () => {
    expect(await pruneFrom("photos/2023/trip")).toEqual(["photos", "photos/2023", "photos/2023/trip"]);
    expect(await pruneFrom(`.scopes/${id}/deeper/than/any`)).toEqual([".scopes", `.scopes/${id}`, `.scopes/${id}/deeper`, `.scopes/${id}/deeper/than`, `.scopes/${id}/deeper/than/any`]);
    expect(await pruneFrom(".scopes/not-a-scope-id/chat/qwen")).toEqual([".scopes", ".scopes/not-a-scope-id", ".scopes/not-a-scope-id/chat", ".scopes/not-a-scope-id/chat/qwen"]);
    expect(await pruneFrom(".kvkeep/warm")).toEqual([".kvkeep", ".kvkeep/warm"]);
  });

  it("isOwnDirLevel: the levels, by their components", () => {
    expect(["k", "k/m", ".scopes", `.scopes/${id}`, `.scopes/${id}/k`, `.scopes/${id}/k/m`].map((p) => isOwnDirLevel(p.split("/")))).toEqual(Array(6).fill(true));
    const not = ["", ".kvkeep", ".kvkeep/x", "k/m/x", `.scopes/${id}/k/m/x`, ".scopes/ABC", `.scopes/${id.toUpperCase()}`, ".scopes/x/k", `.scopes/${id}0`];
    expect(not.map((p) => isOwnDirLevel(p === "" ? [] : p.split("/")))).toEqual(Array(not.length).fill(false));
  });
});
