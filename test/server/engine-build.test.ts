/**
 * `kvkeep serve --engine-build`: which llama.cpp binary node-llama-cpp runs, said at start.
 * Real `kvkeep serve` processes on the tiny generated model: each loads its binary in its own
 * process (two llama.cpp builds cannot share one).
 */
import { existsSync, mkdtempSync, rmSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { afterAll, describe, expect, it } from "vitest";
import { openaiClient, type ServeProcess, servedModel, startServe } from "./helpers.js";

const repoRoot = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../..");
/** node-llama-cpp's local build for this platform (`npx --no node-llama-cpp source download --gpu false`). */
const hasLocalBuild = existsSync(path.join(repoRoot, "node_modules/node-llama-cpp/llama/localBuilds", `${os.platform()}-${process.arch}`, "buildDone.status"));

const roots: string[] = [];
const servers: ServeProcess[] = [];
afterAll(async () => {
  for (const s of servers) await s.stop();
  for (const root of roots) rmSync(root, { recursive: true, force: true });
});

/**
 * The server's stderr once it holds `text`: stdout's "listening" line may be read before the
 * stderr lines written ahead of it (two pipes).
 */
async function stderrWith(server: ServeProcess, text: string): Promise<string> {
  for (const started = Date.now(); Date.now() - started < 10_000; await new Promise((r) => setTimeout(r, 20))) {
    if (server.run.stderr().includes(text)) break;
  }
  return server.run.stderr();
}

async function serve(args: string[]): Promise<ServeProcess> {
  const root = mkdtempSync(path.join(os.tmpdir(), "kvkeep-engine-build-"));
  roots.push(root);
  const server = await startServe(["--root", root, "--threads", "1", ...args]);
  servers.push(server);
  return server;
}

describe("kvkeep serve --engine-build", () => {
  it("prebuilt runs node-llama-cpp's generic binary even when a local build exists, says so at start with how to build one, and serves", async () => {
    const server = await serve(["--engine-build", "prebuilt"]);
    const stderr = await stderrWith(server, "source download");
    expect(stderr).toMatch(/started node-llama-cpp: llama\.cpp \S+, node-llama-cpp's generic prebuilt binary, CPU/);
    expect(stderr).toContain("build one offline with 'npx --no node-llama-cpp source download --gpu false'");
    const client = openaiClient(server);
    const reply = await client.chat.completions.create({ model: await servedModel(client), messages: [{ role: "user", content: "hi" }], max_tokens: 4 });
    expect(reply.usage?.completion_tokens).toBeGreaterThan(0);
  });

  it(`auto (the default) runs the local build when node-llama-cpp has one, else the prebuilt binary (here: ${hasLocalBuild ? "a local build" : "none"})`, async () => {
    const server = await serve([]);
    // The engine step's line is complete once the next step (the model's load) started.
    const stderr = await stderrWith(server, "loading the model");
    if (hasLocalBuild) {
      expect(stderr).toContain("a build for this machine (node-llama-cpp local build)");
      expect(stderr).not.toContain("source download");
    } else {
      expect(stderr).toContain("node-llama-cpp's generic prebuilt binary");
    }
  });
});
