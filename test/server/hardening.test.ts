/**
 * Issue 20, items 4 and 6: `kvkeep serve` under requests a browser page or a hostile client
 * would send. Real server processes (the tiny generated model), real HTTP.
 */
import net from "node:net";
import { mkdtempSync, rmSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { type ServeProcess, startServe } from "./helpers.js";

let server: ServeProcess;
let model: string;
const roots: string[] = [];

beforeAll(async () => {
  roots.push(mkdtempSync(path.join(os.tmpdir(), "kvkeep-harden-")));
  server = await startServe(["--ctx", "4096", "--root", roots[0]!]);
  model = ((await (await fetch(`${server.url}/v1/models`)).json()) as { data: Array<{ id: string }> }).data[0]!.id;
});

afterAll(async () => {
  if (server) expect(await server.stop(), server.run.stderr()).toBe(0);
  for (const root of roots) rmSync(root, { recursive: true, force: true });
});

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
