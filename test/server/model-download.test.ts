/**
 * `kvkeep serve --model URL`: the model is downloaded through node-llama-cpp's own resolver
 * into --models-dir, with progress on stderr while it downloads and while it loads, then
 * served. The "remote" is an HTTP server on 127.0.0.1 in this process serving the generated
 * tiny GGUF: no network. A second start finds the file and downloads nothing.
 */
import { readdirSync, readFileSync, statSync } from "node:fs";
import { createServer, type Server } from "node:http";
import path from "node:path";
import { Readable } from "node:stream";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { tempDir } from "../helpers/temp-root.js";
import { openaiClient, servedModel, startServe, tinyModelPath } from "./helpers.js";

let http: Server;
let base: string;
let model: Buffer;
const requests: string[] = [];

beforeAll(async () => {
  model = readFileSync(await tinyModelPath());
  http = createServer((req, res) => {
    requests.push(`${req.method} ${req.url}`);
    if (req.url !== "/models/tiny-chat.gguf") {
      res.writeHead(404).end();
      return;
    }
    res.writeHead(200, { "content-type": "application/octet-stream", "content-length": model.length });
    if (req.method === "HEAD") res.end();
    else res.end(model);
  });
  await new Promise<void>((resolve) => http.listen(0, "127.0.0.1", resolve));
  const address = http.address();
  base = `http://127.0.0.1:${typeof address === "object" && address ? address.port : 0}`;
});

afterAll(async () => {
  await new Promise<void>((resolve) => http.close(() => resolve()));
});

describe("kvkeep serve --model URL", () => {
  it("downloads the model into --models-dir with progress on stderr, loads it with progress, and serves it; a restart downloads nothing", async () => {
    const modelsDir = tempDir();
    const url = `${base}/models/tiny-chat.gguf`;
    const args = ["--model", url, "--models-dir", modelsDir, "--root", tempDir(), "--threads", "1"];

    const first = await startServe(args);
    try {
      const stderr = first.run.stderr();
      // the steps in order, each ending with its duration (stderr is a pipe: one line per step)
      const steps = ["downloading ", "starting node-llama-cpp", "loading the model tiny-chat.gguf", "creating 1 context"].map((s) => stderr.indexOf(`kvkeep serve: ${s}`));
      expect(steps.every((at) => at >= 0), stderr).toBe(true);
      expect([...steps].sort((a, b) => a - b)).toEqual(steps);
      expect(stderr).toMatch(new RegExp(`downloading ${url.replace(/[.*+?^${}()|[\]\\]/g, "\\$&")}: .* of .* \\(\\d+%\\), done in \\d+\\.\\d s`));
      expect(stderr).toMatch(/loading the model tiny-chat\.gguf \(.*\): 100%, done in \d+\.\d s/);
      expect(first.run.stdout()).not.toContain("Downloading"); // node-llama-cpp's own bar stays off stdout

      const file = path.join(modelsDir, "tiny-chat.gguf");
      expect(statSync(file).size).toBe(model.length);
      expect(readFileSync(file).equals(model)).toBe(true);

      const client = openaiClient(first);
      expect(await servedModel(client)).toBe("tiny-chat");
      const reply = await client.chat.completions.create({ model: "tiny-chat", messages: [{ role: "user", content: "Hi!" }], max_tokens: 4, temperature: 0 });
      expect(reply.choices[0]!.message.content!.length).toBeGreaterThan(0);
    } finally {
      expect(await first.stop()).toBe(0);
    }

    const gets = requests.filter((r) => r.startsWith("GET")).length;
    const second = await startServe(args);
    try {
      expect(second.run.stderr()).not.toContain("downloading");
      expect(second.run.stderr()).toContain("kvkeep serve: loading the model tiny-chat.gguf");
      expect(await servedModel(openaiClient(second))).toBe("tiny-chat");
      // node-llama-cpp may ask the server for the size again; it never fetches the file twice
      expect(statSync(path.join(modelsDir, "tiny-chat.gguf")).size).toBe(model.length);
    } finally {
      expect(await second.stop()).toBe(0);
    }
    expect(requests.filter((r) => r.startsWith("GET")).length - gets).toBeLessThanOrEqual(1);
  }, 180_000);

  it("a URL that is not there fails the start with exit 1, naming it, and leaves nothing in --models-dir", async () => {
    const modelsDir = tempDir();
    const url = `${base}/models/missing.gguf`;
    const { main } = await import("../../src/cli/main.js");
    let stderr = "";
    const code = await main(["serve", "--model", url, "--models-dir", modelsDir, "--port", "0"], {
      stdin: Readable.from([]),
      env: process.env,
      stdout: { write: () => true },
      stderr: { write: (t: string) => (stderr += t) },
    });
    expect(code).toBe(1);
    expect(stderr).toContain(`kvkeep serve: --model ${url}: could not resolve or download it`);
    expect(readdirSync(modelsDir).filter((n) => n.endsWith(".gguf"))).toEqual([]);
  }, 60_000);
});
