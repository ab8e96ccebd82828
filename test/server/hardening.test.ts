/**
 * Issue 20, items 4 and 6: `kvkeep serve` under requests a browser page or a hostile client
 * would send. Real server processes (the tiny generated model), real HTTP.
 */
import http from "node:http";
import net from "node:net";
import { mkdtempSync, rmSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { Registry } from "prom-client";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { CompletionParams, CompletionResult } from "../../src/engines/node-llama-cpp/completion.js";
import { silentLogger } from "../../src/logger.js";
import { createKvKeepMetrics } from "../../src/metrics/index.js";
import { buildApp, type CompletionEngine } from "../../src/server/app.js";
import { hostAllowed, hostName, originAllowed } from "../../src/server/origin.js";
import { SlotPool } from "../../src/server/pool.js";
import { type ServeProcess, startServe } from "./helpers.js";

const KEY = "sk-harden";
/** A second client's key: each key is its own scope, and any of them guards the routes. */
const KEY2 = "sk-harden-second";
let server: ServeProcess;
let keyed: ServeProcess;
let model: string;
const roots: string[] = [];

beforeAll(async () => {
  for (let i = 0; i < 2; i++) roots.push(mkdtempSync(path.join(os.tmpdir(), "kvkeep-harden-")));
  [server, keyed] = await Promise.all([startServe(["--ctx", "4096", "--root", roots[0]!]), startServe(["--root", roots[1]!, "--api-key", KEY, "--api-key", KEY2])]);
  model = ((await (await fetch(`${server.url}/v1/models`)).json()) as { data: Array<{ id: string }> }).data[0]!.id;
});

afterAll(async () => {
  for (const s of [server, keyed]) if (s) expect(await s.stop(), s.run.stderr()).toBe(0);
  for (const root of roots) rmSync(root, { recursive: true, force: true });
});

/** A request with headers a browser would send (Host and Origin included, which fetch will not let us set). */
function raw(
  target: { port: number },
  options: { method?: string; path: string; headers?: Record<string, string>; body?: string },
): Promise<{ status: number; body: any }> {
  return new Promise((resolve, reject) => {
    const req = http.request(
      { host: "127.0.0.1", port: target.port, method: options.method ?? "GET", path: options.path, headers: options.headers, setHost: !options.headers?.host },
      (res) => {
        let text = "";
        res.setEncoding("utf8").on("data", (c: string) => (text += c));
        res.on("end", () => resolve({ status: res.statusCode ?? 0, body: text ? JSON.parse(text) : null }));
      },
    );
    req.on("error", reject);
    req.end(options.body);
  });
}

/** POST a chat completion as JSON; the status and the parsed body. */
async function chat(target: ServeProcess, body: unknown, headers: Record<string, string> = {}): Promise<{ status: number; body: any }> {
  const res = await fetch(`${target.url}/v1/chat/completions`, {
    method: "POST",
    headers: { "content-type": "application/json", ...headers },
    body: JSON.stringify(body),
  });
  return { status: res.status, body: await res.json() };
}

/** Run `work` while polling /health every few ms; the worst /health latency seen, and how many answered. */
async function healthDuring<T>(target: ServeProcess, work: () => Promise<T>): Promise<{ result: T; worstMs: number; answered: number; tookMs: number }> {
  let done = false;
  let worstMs = 0;
  let answered = 0;
  const poll = (async () => {
    while (!done) {
      const started = performance.now();
      const res = await fetch(`${target.url}/health`);
      await res.text();
      worstMs = Math.max(worstMs, performance.now() - started);
      answered++;
      await new Promise((r) => setTimeout(r, 5));
    }
  })();
  const started = performance.now();
  const result = await work();
  const tookMs = performance.now() - started;
  done = true;
  await poll;
  return { result, worstMs, answered, tookMs };
}

describe("a prompt that cannot fit is refused before it is rendered (issue 20, item 4)", () => {
  it("120 000 one-character messages (3.7 MiB): a 400 for the message count, before rendering; /health answers meanwhile", async () => {
    const messages = Array.from({ length: 120_000 }, () => ({ role: "user", content: "x" }));
    const { result, worstMs, tookMs, answered } = await healthDuring(server, () => chat(server, { model, messages, max_tokens: 1 }));
    expect(result.status).toBe(400);
    expect(result.body.error).toMatchObject({ code: "context_length_exceeded", param: "messages", type: "invalid_request_error" });
    // Refused by the count (the engine's own refusal, after rendering, says how many tokens the prompt has).
    expect(result.body.error.message).toMatch(/more than 4095 messages, and each takes at least one token/);
    expect(answered).toBeGreaterThan(0);
    console.log(`120 000-message request: answered 400 in ${tookMs.toFixed(0)} ms; worst /health latency meanwhile ${worstMs.toFixed(0)} ms (${answered} polls)`);
  });

  it("one message longer in bytes than the context times the longest token: refused by its size, before rendering", async () => {
    // The tiny model's longest token is 16 bytes: 4096 × 16 bytes cannot be 4096 tokens.
    const { result, worstMs } = await healthDuring(server, () => chat(server, { model, messages: [{ role: "user", content: "ab".repeat(40_000) }], max_tokens: 1 }));
    expect(result.status).toBe(400);
    expect(result.body.error).toMatchObject({ code: "context_length_exceeded", param: "messages" });
    expect(result.body.error.message).toMatch(/at least 80000 bytes, at least 5000 tokens/);
    console.log(`80 000-byte message: worst /health latency meanwhile ${worstMs.toFixed(0)} ms`);
  });

  it("a long prompt under both bounds is still rendered and judged by its real length", async () => {
    const messages = Array.from({ length: 2000 }, () => ({ role: "user", content: "x" }));
    const { result, worstMs } = await healthDuring(server, () => chat(server, { model, messages, max_tokens: 1 }));
    expect(result.status).toBe(400);
    expect(result.body.error.message).toMatch(/^the prompt \(\d+ tokens\) does not fit the context \(4096\)/);
    console.log(`2 000-message request (rendered, then refused): worst /health latency meanwhile ${worstMs.toFixed(0)} ms`);
    const ok = await chat(server, { model, messages: messages.slice(0, 50), max_tokens: 1 });
    expect(ok.status).toBe(200);
  });
});

describe("a browser page of another site cannot use the server (issue 20, item 6)", () => {
  it("DNS rebinding: a Host naming another site gets 403 on every route, before the body is read; loopback names and IP literals are served", async () => {
    const chatBody = JSON.stringify({ model, messages: [{ role: "user", content: "hi" }], max_tokens: 1 });
    const json = { "content-type": "application/json" };
    for (const host of [`attacker.example:${server.port}`, "attacker.example", `rebind.127.0.0.1.nip.io:${server.port}`]) {
      for (const request of [
        { path: "/health" },
        { path: "/v1/models" },
        { path: "/metrics" },
        { method: "POST", path: "/v1/chat/completions", headers: json, body: chatBody },
      ]) {
        const res = await raw(server, { ...request, headers: { ...request.headers, host } });
        expect(res.status, `${host} ${request.path}`).toBe(403);
        expect(res.body.error).toMatchObject({ code: "host_not_allowed" });
      }
    }
    for (const host of [`localhost:${server.port}`, `127.0.0.1:${server.port}`, `[::1]:${server.port}`, `app.localhost:${server.port}`]) {
      expect((await raw(server, { path: "/v1/models", headers: { host } })).status, host).toBe(200);
    }
    // With an API key the key guards every route (a rebinding page cannot know it): any name is served.
    expect((await raw(keyed, { path: "/v1/models", headers: { host: "gpu-box.lan", authorization: `Bearer ${KEY}` } })).status).toBe(200);
    expect((await raw(keyed, { path: "/v1/models", headers: { host: "gpu-box.lan", authorization: `Bearer ${KEY2}` } })).status).toBe(200);
    expect((await raw(keyed, { path: "/v1/models", headers: { host: "gpu-box.lan" } })).status).toBe(401);
  });

  it("a page on another origin gets 403 (cross-site POST, Origin: null); a page kvkeep serves from its own origin still works", async () => {
    const body = JSON.stringify({ model, messages: [{ role: "user", content: "hi" }], max_tokens: 2 });
    const headers = { "content-type": "application/json" };
    for (const origin of ["http://evil.example", "null", `http://localhost:${server.port + 1}`, `https://127.0.0.1:${server.port}`]) {
      const res = await raw(server, { method: "POST", path: "/v1/chat/completions", headers: { ...headers, origin }, body });
      expect(res.status, origin).toBe(403);
      expect(res.body.error).toMatchObject({ code: "origin_not_allowed" });
    }
    // Same origin: what a web page served by kvkeep at `/` would send.
    const own = `http://127.0.0.1:${server.port}`;
    const ok = await raw(server, { method: "POST", path: "/v1/chat/completions", headers: { ...headers, origin: own, host: `127.0.0.1:${server.port}` }, body });
    expect(ok.status).toBe(200);
    expect(ok.body.choices[0].message.role).toBe("assistant");
    expect((await raw(server, { path: "/health", headers: { origin: `http://localhost:${server.port}`, host: `localhost:${server.port}` } })).status).toBe(200);
  });

  it("/health says only that the server is up without a key, when keys are set; the model and queue with any of them", async () => {
    const anonymous = await raw(keyed, { path: "/health" });
    expect(anonymous).toEqual({ status: 200, body: { status: "ok" } });
    const withKey = await raw(keyed, { path: "/health", headers: { authorization: `Bearer ${KEY}` } });
    expect(withKey.body).toMatchObject({ status: "ok", model: expect.any(String), parallel: 1, queued: 0 });
    const withSecondKey = await raw(keyed, { path: "/health", headers: { authorization: `Bearer ${KEY2}` } });
    expect(withSecondKey.body).toMatchObject({ status: "ok", model: expect.any(String), parallel: 1, queued: 0 });
    const wrongKey = await raw(keyed, { path: "/health", headers: { authorization: "Bearer nope" } });
    expect(wrongKey.body).toEqual({ status: "ok" });
    // Without keys (one user on loopback) it says all.
    expect((await raw(server, { path: "/health" })).body).toMatchObject({ status: "ok", model, parallel: 1, queued: 0 });
  });

  it("origin and host rules (pure)", () => {
    expect(["localhost:8080", "[::1]:8080", "127.0.0.1", "LOCALHOST.", "a.localhost", "10.0.0.7:80"].map((h) => hostAllowed(h, "127.0.0.1", false))).toEqual([
      true, true, true, true, true, true,
    ]);
    expect(["evil.example", "evil.example:8080", "localhost.evil.example", "", "host:port"].map((h) => hostAllowed(h, "127.0.0.1", false))).toEqual([
      false, false, false, false, false,
    ]);
    expect(hostAllowed(undefined, "127.0.0.1", false)).toBe(false);
    expect(hostAllowed("gpu-box.lan:8080", "gpu-box.lan", false)).toBe(true);
    expect(hostAllowed("evil.example", "127.0.0.1", true)).toBe(true);
    expect(hostName("[::1]:8080")).toBe("::1");
    expect(originAllowed(undefined, "localhost:8080")).toBe(true); // not a browser page
    expect(originAllowed("http://localhost:8080", "localhost:8080")).toBe(true);
    expect(originAllowed("http://localhost:80", "localhost")).toBe(true);
    expect(originAllowed("http://localhost:8081", "localhost:8080")).toBe(false);
    expect(originAllowed("null", "localhost:8080")).toBe(false);
  });
});

/** An engine that streams `pieces` one every `everyMs`: these tests are about HTTP, not the model. */
function slowEngine(pieces: number, everyMs: number): CompletionEngine {
  return {
    async completion(params: CompletionParams): Promise<CompletionResult> {
      let text = "";
      for (let i = 0; i < pieces; i++) {
        await new Promise((r) => setTimeout(r, everyMs));
        text += "x";
        params.onToken?.("x");
      }
      return {
        text,
        stats: {
          hit: false, promptTokens: 1, reusedTokens: 0, evaluatedTokens: 1, ttftMs: everyMs, loadMs: 0, saveMs: 0, commitMs: 0,
          commitFailure: null, completionTokens: pieces, finishReason: "stop", source: "none", sourceKey: null, refused: null,
        } as CompletionResult["stats"],
      };
    },
  };
}

describe("request bodies have a read timeout (issue 20, item 6)", () => {
  it("a client that trickles its body in is answered 408 and cut off at the timeout; a stream that outlasts it is not", async () => {
    const { app } = buildApp({
      modelId: "m", modelCreated: 0, pool: new SlotPool<CompletionEngine>([slowEngine(6, 400)], 4), parallel: 1,
      metrics: createKvKeepMetrics({ registry: new Registry() }), apiKeys: [], bodyLimit: 1 << 20, cacheEnabled: false,
      logger: silentLogger, host: "127.0.0.1", requestTimeoutMs: 1000,
    });
    await app.listen({ host: "127.0.0.1", port: 0 });
    const port = (app.server.address() as net.AddressInfo).port;
    try {
      // Headers, then 10 of the 1 000 body bytes promised, then nothing.
      const started = Date.now();
      const answer = await new Promise<{ text: string; closedAfterMs: number }>((resolve, reject) => {
        const socket = net.connect(port, "127.0.0.1", () => {
          socket.write(`POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:${port}\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{"model":"`);
        });
        let text = "";
        socket.setEncoding("utf8").on("data", (c: string) => (text += c));
        socket.on("close", () => resolve({ text, closedAfterMs: Date.now() - started }));
        socket.on("error", reject);
        setTimeout(() => {
          socket.destroy();
          reject(new Error("the server held the trickling connection for 15 s"));
        }, 15_000).unref();
      });
      expect(answer.text).toMatch(/^HTTP\/1\.1 408 /);
      expect(answer.closedAfterMs).toBeGreaterThanOrEqual(900);
      // A streamed reply of 2.4 s — longer than the request timeout — is not cut: the timeout is for receiving the request.
      const res = await fetch(`http://127.0.0.1:${port}/v1/chat/completions`, {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify({ model: "m", messages: [{ role: "user", content: "hi" }], stream: true }),
      });
      const streamed = await res.text();
      expect(res.status).toBe(200);
      expect(streamed.match(/"content":"x"/g)).toHaveLength(6);
      expect(streamed.trimEnd().endsWith("data: [DONE]")).toBe(true);
    } finally {
      await app.close();
    }
  });
});
