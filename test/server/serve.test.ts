/**
 * `kvkeep serve` as a client sees it: one real server process (--parallel 2) on 127.0.0.1,
 * real HTTP, the official `openai` client, the tiny generated model. Tests in this file run
 * one after another against it; each uses its own conversations.
 */
import { randomBytes } from "node:crypto";
import { mkdtempSync, readdirSync, rmSync, truncateSync } from "node:fs";
import { writeFile } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import OpenAI from "openai";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { generateConfigHash, openKvCacheStore } from "../../src/index.js";
import { scopeIdOf } from "../../src/keys/scope.js";
import { scopeOfApiKey } from "../../src/server/options.js";
import { openaiClient, parsePrometheus, type ServeProcess, servedModel, startServe, tokensHeldAfter } from "./helpers.js";

type Message = OpenAI.ChatCompletionMessageParam;

const KEY = "sk-test-kvkeep";
const MAX_QUEUE = 6;
const roots: string[] = [];
let server: ServeProcess;
/** The same configuration on a root of its own: replies computed one client at a time, sharing no cache with `server`. */
let reference: ServeProcess;
let client: OpenAI;
let model: string;

beforeAll(async () => {
  const flags = (root: string) => ["--parallel", "2", "--max-queue", String(MAX_QUEUE), "--ctx", "4096", "--api-key", KEY, "--root", root, "--max-body", "64K"];
  for (let i = 0; i < 2; i++) roots.push(mkdtempSync(path.join(os.tmpdir(), "kvkeep-serve-")));
  [server, reference] = await Promise.all([startServe(flags(roots[0]!)), startServe(flags(roots[1]!))]);
  client = openaiClient(server, KEY);
  model = await servedModel(client);
});

afterAll(async () => {
  for (const s of [server, reference]) if (s) expect(await s.stop(), s.run.stderr()).toBe(0);
  for (const root of roots) rmSync(root, { recursive: true, force: true });
});

interface Turn {
  text: string;
  finish: string;
  usage: OpenAI.CompletionUsage;
}

async function complete(messages: Message[], extra: Record<string, unknown> = {}, options: OpenAI.RequestOptions = {}, on = client): Promise<Turn> {
  const response = await on.chat.completions.create(
    { model, messages, max_tokens: 16, temperature: 0, ...extra } as OpenAI.ChatCompletionCreateParamsNonStreaming,
    options,
  );
  return { text: response.choices[0]!.message.content ?? "", finish: response.choices[0]!.finish_reason, usage: response.usage! };
}

const cached = (turn: Turn): number => turn.usage.prompt_tokens_details?.cached_tokens ?? -1;

function conversation(tag: string): { system: Message; user: (n: number) => Message } {
  return {
    system: { role: "system", content: `You are the assistant of conversation ${tag}; answer in one short line.` },
    user: (n) => ({ role: "user", content: `Question ${n} of ${tag}: what comes after ${n * 7}?` }),
  };
}

async function fetchJson(route: string, init: RequestInit & { auth?: boolean } = {}): Promise<{ status: number; headers: Headers; body: any }> {
  const headers = new Headers(init.headers);
  if (init.auth !== false) headers.set("authorization", `Bearer ${KEY}`);
  const response = await fetch(`${server.url}${route}`, { ...init, headers });
  const text = await response.text();
  let body: unknown = text;
  try {
    body = JSON.parse(text);
  } catch {}
  return { status: response.status, headers: response.headers, body };
}

async function metrics(): Promise<Map<string, number>> {
  const { status, headers, body } = await fetchJson("/metrics");
  expect(status).toBe(200);
  expect(headers.get("content-type")).toMatch(/^text\/plain; version=0\.0\.4/);
  return parsePrometheus(body as string);
}

async function until(what: string, check: () => Promise<boolean>, timeoutMs = 30_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting until ${what}`);
    await new Promise((r) => setTimeout(r, 25));
  }
}

/** Read server-sent events from a streamed response until `stopAfter` returns true or the stream ends. */
async function readEvents(response: Response, stopAfter: (events: string[]) => boolean = () => false): Promise<string[]> {
  const reader = response.body!.pipeThrough(new TextDecoderStream()).getReader();
  const events: string[] = [];
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += value;
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      events.push(buffer.slice(0, end));
      buffer = buffer.slice(end + 2);
    }
    if (stopAfter(events)) {
      await reader.cancel();
      break;
    }
  }
  return events;
}

function streamRequest(body: Record<string, unknown>, signal?: AbortSignal): Promise<Response> {
  return fetch(`${server.url}/v1/chat/completions`, {
    method: "POST",
    headers: { authorization: `Bearer ${KEY}`, "content-type": "application/json" },
    body: JSON.stringify({ model, stream: true, temperature: 0, ...body }),
    ...(signal ? { signal } : {}),
  });
}

describe("completions", () => {
  it("answers a non-streaming request in OpenAI's format, with usage and a finish reason", async () => {
    const c = conversation("format");
    const response = await client.chat.completions.create({ model, messages: [c.system, c.user(1)], max_tokens: 12, temperature: 0 });
    expect(response.object).toBe("chat.completion");
    expect(response.id).toMatch(/^chatcmpl-/);
    expect(response.model).toBe(model);
    expect(response.choices).toHaveLength(1);
    const choice = response.choices[0]!;
    expect(choice.message.role).toBe("assistant");
    expect(choice.message.content!.length).toBeGreaterThan(0);
    expect(["stop", "length"]).toContain(choice.finish_reason);
    const usage = response.usage!;
    if (choice.finish_reason === "length") expect(usage.completion_tokens).toBe(12);
    expect(usage.total_tokens).toBe(usage.prompt_tokens + usage.completion_tokens);
    expect(usage.prompt_tokens_details?.cached_tokens).toBe(0); // a new conversation: nothing reused
    expect((await client.models.list()).data.map((m) => m.id)).toEqual([model]);
  });

  it("streams the same text as server-sent events: role first, usage: null on chunks, a usage chunk, then [DONE]", async () => {
    const c = conversation("stream");
    const messages = [c.system, c.user(1)];
    const whole = await complete(messages, { kv_cache: false, max_tokens: 20 });

    const events = await readEvents(await streamRequest({ messages, max_tokens: 20, kv_cache: false, stream_options: { include_usage: true } }));
    expect(events.every((e) => e.startsWith("data: "))).toBe(true);
    expect(events.at(-1)).toBe("data: [DONE]");
    const chunks = events.slice(0, -1).map((e) => JSON.parse(e.slice(6)) as OpenAI.ChatCompletionChunk);
    expect(chunks.every((c) => c.object === "chat.completion.chunk" && c.id === chunks[0]!.id)).toBe(true);
    expect(chunks[0]!.choices[0]!.delta.role).toBe("assistant");
    const usageChunk = chunks.at(-1)!;
    expect(usageChunk.choices).toEqual([]);
    expect(usageChunk.usage).toEqual(whole.usage);
    expect(chunks.slice(0, -1).every((c) => c.usage === null)).toBe(true);
    expect(chunks.at(-2)!.choices[0]!.finish_reason).toBe(whole.finish);
    expect(chunks.map((c) => c.choices[0]?.delta.content ?? "").join("")).toBe(whole.text);

    // The official client's stream: the same text. (kv_cache: false on both sides, because a
    // cold prefill and a primed-then-continued one may differ in the last bits of the logits.)
    const stream = await client.chat.completions.create({ model, messages, max_tokens: 20, temperature: 0, stream: true, kv_cache: false } as OpenAI.ChatCompletionCreateParamsStreaming);
    let text = "";
    for await (const chunk of stream) text += chunk.choices[0]?.delta.content ?? "";
    expect(text).toBe(whole.text);
  });

  it("passes sampling options to the engine: a seed repeats a sampled reply, stop cuts it (streamed too)", async () => {
    const c = conversation("sampling");
    const messages = [c.system, c.user(1)];
    const sampled = (seed: number) => complete(messages, { kv_cache: false, temperature: 1, top_p: 0.95, seed, max_tokens: 16 });
    const first = await sampled(7);
    expect((await sampled(7)).text).toBe(first.text);
    const others = await Promise.all([8, 9, 10].map(async (seed) => (await sampled(seed)).text));
    expect(others.some((text) => text !== first.text)).toBe(true);

    const greedy = await complete(messages, { kv_cache: false, max_tokens: 24 });
    expect(greedy.text.length).toBeGreaterThan(11);
    const stop = greedy.text.slice(8, 11);
    const expected = greedy.text.slice(0, greedy.text.indexOf(stop));
    const cut = await complete(messages, { kv_cache: false, max_tokens: 24, stop: [stop] });
    expect(cut).toMatchObject({ text: expected, finish: "stop" });
    const stream = await client.chat.completions.create({ model, messages, max_tokens: 24, temperature: 0, stop, stream: true, kv_cache: false } as OpenAI.ChatCompletionCreateParamsStreaming);
    let text = "";
    let finish: string | null = null;
    for await (const chunk of stream) {
      text += chunk.choices[0]?.delta.content ?? "";
      finish = chunk.choices[0]?.finish_reason ?? finish;
    }
    expect({ text, finish }).toEqual({ text: expected, finish: "stop" });
  });

  it("a second turn reports cached_tokens: exactly the tokens the first turn left in the cache, ≥ 90% of its prompt", async () => {
    const c = conversation("second-turn");
    const t1 = await complete([c.system, c.user(1)]);
    const t2 = await complete([c.system, c.user(1), { role: "assistant", content: t1.text }, c.user(2)]);
    expect(cached(t2)).toBe(tokensHeldAfter(t1.usage, t1.finish));
    expect(cached(t2)).toBeGreaterThanOrEqual(0.9 * t1.usage.prompt_tokens);
    expect(t2.usage.prompt_tokens).toBeGreaterThan(cached(t2));
  });

  it("without any id, regenerate, edits and a new chat with the same system prompt reuse what other caches share", async () => {
    const c = conversation("auto-edits");
    const h1: Message[] = [c.system, c.user(1)];
    const t1 = await complete(h1);
    const h2: Message[] = [...h1, { role: "assistant", content: t1.text }, c.user(2)];
    const t2 = await complete(h2);
    // Regenerate: the client sends the same history again.
    const again = await complete(h2);
    expect(again.text).toBe(t2.text);
    expect(cached(again)).toBe(again.usage.prompt_tokens - 1); // one token is always evaluated
    // Edit the last question: reuse reaches into the edited message, past the first reply.
    const editLast = await complete([...h1, { role: "assistant", content: t1.text }, { role: "user", content: "Something else entirely." }]);
    expect(cached(editLast)).toBeGreaterThanOrEqual(tokensHeldAfter(t1.usage, t1.finish));
    expect(cached(editLast)).toBeLessThan(editLast.usage.prompt_tokens);
    // Edit the first question (a new chat with the same system prompt): the system prompt is reused.
    const editFirst = await complete([c.system, { role: "user", content: "A different first question." }]);
    expect(cached(editFirst)).toBeGreaterThanOrEqual((c.system.content as string).length); // byte-level vocab: a token per character
    expect(cached(editFirst)).toBeLessThan(tokensHeldAfter(t1.usage, t1.finish));
  });

  it("a named session (kv_cache in the body or the X-KV-Cache header) reuses its prefix on regenerate and edit", async () => {
    const c = conversation("named");
    const h1: Message[] = [c.system, c.user(1)];
    const t1 = await complete(h1, { kv_cache: "named-session" });
    const h2: Message[] = [...h1, { role: "assistant", content: t1.text }, c.user(2)];
    const t2 = await complete(h2, {}, { headers: { "X-KV-Cache": "named-session" } });
    expect(cached(t2)).toBe(tokensHeldAfter(t1.usage, t1.finish));

    // Regenerate: the same history again; the cache holds h2 and its reply.
    const again = await complete(h2, { kv_cache: "named-session" });
    expect(again.text).toBe(t2.text);
    expect(cached(again)).toBe(again.usage.prompt_tokens - 1); // one token is always evaluated
    // Edit the last question: reuse stops where the prompts differ, past the first reply.
    const edited: Message[] = [...h1, { role: "assistant", content: t1.text }, { role: "user", content: "Something else entirely." }];
    const afterEdit = await complete(edited, { kv_cache: "named-session" });
    expect(cached(afterEdit)).toBeGreaterThanOrEqual(tokensHeldAfter(t1.usage, t1.finish));
    expect(cached(afterEdit)).toBeLessThan(afterEdit.usage.prompt_tokens);
  });
});

describe("concurrency", () => {
  it("8 concurrent two-turn conversations on --parallel 2 each get exactly their single-client replies", async () => {
    const N = 8;
    const run = async (i: number, on: OpenAI): Promise<string[]> => {
      const c = conversation(`parallel-${i}`);
      const t1 = await complete([c.system, c.user(1)], {}, {}, on);
      const t2 = await complete([c.system, c.user(1), { role: "assistant", content: t1.text }, c.user(2)], {}, {}, on);
      expect(cached(t2)).toBe(tokensHeldAfter(t1.usage, t1.finish));
      return [t1.text, t2.text];
    };
    // One client at a time, on the reference server.
    const single: string[][] = [];
    for (let i = 0; i < N; i++) single.push(await run(i, openaiClient(reference, KEY)));
    expect(new Set(single.map((r) => r.join("|"))).size).toBe(N); // the conversations really differ
    // All at once: 2 run, 6 wait in the queue.
    const concurrent = await Promise.all(Array.from({ length: N }, (_, i) => run(i, client)));
    expect(concurrent).toEqual(single);
    expect((await fetchJson("/health")).body).toMatchObject({ status: "ok", queued: 0 });
  });

  it("a client that disconnects mid-stream aborts its turn; the next request on that conversation resumes from the last committed state", async () => {
    const c = conversation("abort");
    const h1: Message[] = [c.system, c.user(1)];
    const t1 = await complete(h1);
    const h2: Message[] = [...h1, { role: "assistant", content: t1.text }, c.user(2)];
    // The same two turns uninterrupted, on the reference server.
    const r1 = await complete(h1, {}, {}, openaiClient(reference, KEY));
    expect(r1.text).toBe(t1.text);
    const r2 = await complete(h2, {}, {}, openaiClient(reference, KEY));

    const before = (await metrics()).get('kvkeep_turns_rolled_back_total{reason="aborted"}')!;
    const controller = new AbortController();
    const response = await streamRequest({ messages: h2, max_tokens: 3000 }, controller.signal);
    expect(response.status).toBe(200);
    const events = await readEvents(response, (e) => e.length >= 4); // role chunk + 3 pieces
    expect(events.length).toBeGreaterThanOrEqual(4);
    controller.abort();
    // The server notices, stops generating and rolls the turn back (a finished turn would commit).
    await until("the aborted turn rolled back", async () => (await metrics()).get('kvkeep_turns_rolled_back_total{reason="aborted"}')! > before);

    const next = await complete(h2);
    expect(next.text).toBe(r2.text);
    expect(cached(next)).toBe(tokensHeldAfter(t1.usage, t1.finish)); // turn 1's state, kept
    expect((await fetchJson("/health")).body).toMatchObject({ status: "ok", queued: 0 });
  });

  it("past the wait queue, a request gets 429 with Retry-After; the server serves again once the queue drains", async () => {
    const c = conversation("busy");
    const blockers: AbortController[] = [];
    const pending: Promise<unknown>[] = [];
    let refused: { status: number; headers: Headers; body: any } | null = null;
    try {
      // 2 running + MAX_QUEUE waiting, each a long generation without a cache.
      for (let i = 0; i < 2 + MAX_QUEUE; i++) {
        const controller = new AbortController();
        blockers.push(controller);
        pending.push(streamRequest({ messages: [c.system, c.user(i)], max_tokens: 3800, kv_cache: false }, controller.signal).catch(() => null));
      }
      await until("the queue is full", async () => (await fetchJson("/health")).body.queued === MAX_QUEUE);
      // A running blocker could end between the check and the request; then the queue had a
      // place, so try again (bounded).
      for (let attempt = 0; attempt < 5 && !refused; attempt++) {
        const controller = new AbortController();
        const response = await fetchJson("/v1/chat/completions", {
          method: "POST",
          headers: { "content-type": "application/json" },
          body: JSON.stringify({ model, messages: [c.system, c.user(99)], max_tokens: 1 }),
          signal: AbortSignal.any([controller.signal, AbortSignal.timeout(3000)]),
        }).catch(() => null);
        if (response?.status === 429) refused = response;
      }
      expect(refused).not.toBeNull();
      expect(Number(refused!.headers.get("retry-after"))).toBeGreaterThanOrEqual(1);
      expect(refused!.body).toEqual({ error: { message: expect.stringContaining("busy"), type: "rate_limit_error", param: null, code: "rate_limit_exceeded" } });
      await expect(client.chat.completions.create({ model, messages: [c.user(100)], max_tokens: 1 })).rejects.toBeInstanceOf(OpenAI.RateLimitError);
    } finally {
      for (const controller of blockers) controller.abort();
      await Promise.all(pending);
    }
    await until("the queue drained", async () => (await fetchJson("/health")).body.queued === 0);
    expect((await complete([c.system, c.user(1)], { max_tokens: 2 })).usage.completion_tokens).toBeGreaterThan(0);
  });
});

describe("security and errors", () => {
  const post = (body: string, headers: Record<string, string> = {}, auth = true) =>
    fetchJson("/v1/chat/completions", { method: "POST", headers: { "content-type": "application/json", ...headers }, body, auth });

  function expectOpenAiError(response: { status: number; body: any }, status: number, code: string | null, param: string | null = null): void {
    expect(response.status).toBe(status);
    expect(Object.keys(response.body)).toEqual(["error"]);
    expect(Object.keys(response.body.error).sort()).toEqual(["code", "message", "param", "type"]);
    expect(response.body.error).toMatchObject({ code, param });
    expect(response.body.error.message).not.toMatch(/\n\s+at /); // never a stack trace
  }

  it("requires the API key on every route but /health and the web page", async () => {
    const body = JSON.stringify({ model, messages: [{ role: "user", content: "hi" }], max_tokens: 1 });
    expectOpenAiError(await post(body, {}, false), 401, "invalid_api_key");
    expectOpenAiError(await post(body, { authorization: "Bearer wrong-key" }, false), 401, "invalid_api_key");
    expectOpenAiError(await post(body, { authorization: `Basic ${KEY}` }, false), 401, "invalid_api_key");
    expectOpenAiError(await fetchJson("/v1/models", { auth: false }), 401, "invalid_api_key");
    expectOpenAiError(await fetchJson("/metrics", { auth: false }), 401, "invalid_api_key");
    expectOpenAiError(await fetchJson("/kvkeep/sessions", { auth: false }), 401, "invalid_api_key");
    expect((await fetchJson("/health", { auth: false })).status).toBe(200);
    // The page is static and holds nothing: it asks for the key and sends it with its requests.
    const page = await fetchJson("/", { auth: false });
    expect(page.status).toBe(200);
    expect(page.headers.get("content-type")).toMatch(/^text\/html/);
    await expect(openaiClient(server, "wrong-key").models.list()).rejects.toBeInstanceOf(OpenAI.AuthenticationError);
  });

  it("gives 413 for an oversized body, 400 for bad JSON or invalid fields, 404 for an unknown model or URL, 415 for non-JSON", async () => {
    const huge = JSON.stringify({ model, messages: [{ role: "user", content: "x".repeat(70 * 1024) }] });
    expectOpenAiError(await post(huge), 413, "request_too_large");
    expectOpenAiError(await post('{"model": "x", "messages": ['), 400, "invalid_json");
    expectOpenAiError(await post(""), 400, "invalid_json");
    expectOpenAiError(await post(JSON.stringify({ model, messages: [{ role: "user", content: "hi" }], temperature: 5 })), 400, "invalid_value", "temperature");
    expectOpenAiError(await post(JSON.stringify({ model, messages: [{ role: "wizard", content: "hi" }] })), 400, "invalid_value", "messages[0].role");
    expectOpenAiError(await post(JSON.stringify({ model, messages: [] })), 400, "invalid_value", "messages");
    expectOpenAiError(await post(JSON.stringify({ messages: [{ role: "user", content: "hi" }] })), 400, "invalid_value", "model");
    expectOpenAiError(await post(JSON.stringify({ model, messages: [{ role: "user", content: "hi" }], max_tokens: "5" })), 400, "invalid_value", "max_tokens");
    expectOpenAiError(await post(JSON.stringify({ model, messages: [{ role: "user", content: "hi" }], n: 2 })), 400, null, "n");
    expectOpenAiError(await post(JSON.stringify({ model, messages: [{ role: "user", content: "hi" }], kv_cache: "../escape" })), 400, "invalid_kv_cache", "kv_cache");
    expectOpenAiError(await post(JSON.stringify({ model, messages: [{ role: "user", content: "x".repeat(5000) }] })), 400, "context_length_exceeded", "messages");
    expectOpenAiError(await post("model=x", { "content-type": "text/plain" }), 415, "unsupported_media_type");
    expectOpenAiError(await post(JSON.stringify({ model: "gpt-4o", messages: [{ role: "user", content: "hi" }] })), 404, "model_not_found", "model");
    expectOpenAiError(await fetchJson("/v1/nothing-here"), 404, "unknown_url");
    await expect(client.chat.completions.create({ model: "gpt-4o", messages: [{ role: "user", content: "hi" }] })).rejects.toBeInstanceOf(OpenAI.NotFoundError);
    await expect(client.chat.completions.create({ model, messages: [{ role: "user", content: "hi" }], temperature: -1 })).rejects.toBeInstanceOf(OpenAI.BadRequestError);
  });
});

describe("metrics", () => {
  it("/metrics parses as Prometheus text and its counters move as two turns, a regenerate and an abort say", async () => {
    const before = await metrics();
    const c = conversation("metrics");
    const h1: Message[] = [c.system, c.user(1)];
    const t1 = await complete(h1);
    const h2: Message[] = [...h1, { role: "assistant", content: t1.text }, c.user(2)];
    const t2 = await complete(h2);
    const regenerated = await complete(h2); // from the cache turn 2 committed (another key: a prefix hit)
    const controller = new AbortController();
    await readEvents(await streamRequest({ messages: [...h2, { role: "assistant", content: t2.text }, c.user(3)], max_tokens: 3000 }, controller.signal), (e) => e.length >= 3);
    controller.abort();
    await until("the abort is counted", async () => (await metrics()).get('kvkeep_turns_rolled_back_total{reason="aborted"}')! > before.get('kvkeep_turns_rolled_back_total{reason="aborted"}')!);
    const after = await metrics();
    const delta = (name: string): number => after.get(name)! - before.get(name)!;

    expect(delta('kvkeep_cache_misses_total{reason="none"}')).toBe(1); // turn 1: a new conversation
    expect(delta('kvkeep_cache_hits_total{source="own"}')).toBe(1); // turn 2
    expect(delta('kvkeep_cache_hits_total{source="prefix"}')).toBe(1); // the regenerate
    expect(delta('kvkeep_turns_rolled_back_total{reason="aborted"}')).toBe(1);
    expect(delta('kvkeep_turns_rolled_back_total{reason="error"}')).toBe(0);
    const turns = [t1, t2, regenerated];
    const sum = (f: (t: Turn) => number): number => turns.reduce((n, t) => n + f(t), 0);
    expect(delta("kvkeep_prompt_tokens_reused_total")).toBe(sum(cached));
    expect(delta("kvkeep_prompt_tokens_evaluated_total")).toBe(sum((t) => t.usage.prompt_tokens - cached(t)));
    expect(delta("kvkeep_completion_tokens_total")).toBe(sum((t) => t.usage.completion_tokens));
    expect(delta("kvkeep_time_to_first_token_seconds_count")).toBe(3);
    expect(delta("kvkeep_cache_commit_seconds_count")).toBe(3);
    expect(delta("kvkeep_cache_save_seconds_count")).toBe(3);
    expect(after.get('kvkeep_time_to_first_token_seconds_bucket{le="+Inf"}')).toBe(after.get("kvkeep_time_to_first_token_seconds_count"));
    expect(after.get('kvkeep_store_bytes{kind="auto"}')).toBeGreaterThan(0);
    expect(after.has('kvkeep_store_bytes{kind="named"}')).toBe(true);
    expect(after.get("kvkeep_queue_depth")).toBe(0);
    for (const reason of ["idle", "budget"]) expect(after.has(`kvkeep_evictions_total{reason="${reason}"}`)).toBe(true);
    for (const reason of ["foreign", "corrupt"]) expect(after.has(`kvkeep_cache_misses_total{reason="${reason}"}`)).toBe(true);
  });

  it("a cache another model wrote counts as a foreign miss, a truncated one as a corrupt miss", async () => {
    const before = await metrics();
    // Foreign: a real cache committed for the same name, model id and system prompt by a store
    // of another fingerprint (another process on the root, as after a model upgrade).
    const f = conversation("refused-foreign");
    const planter = openKvCacheStore({ root: roots[0]! });
    // In the scope of the server's API key: the conversations its clients reach.
    const session = planter.createSession(model, { fingerprint: "another-model", scope: scopeOfApiKey(KEY) });
    const planted = await session.beginTurn({
      kind: "custom",
      customKey: "refused-foreign",
      configHash: generateConfigHash(f.system.content as string),
      primeIfMissing: (p) => writeFile(p, randomBytes(4096)),
    });
    await writeFile(planted.savePath, randomBytes(8192));
    expect(await session.commitTurn(planted, { kind: "static", messageCount: 2 })).toMatchObject({ committed: true });
    await planter.close();
    const foreign = await complete([f.system, f.user(1)], { kv_cache: "refused-foreign" });
    expect(cached(foreign)).toBe(0);

    // Corrupt: this server's own cache, truncated between two turns.
    const c = conversation("refused-corrupt");
    const h1: Message[] = [c.system, c.user(1)];
    const t1 = await complete(h1, { kv_cache: "refused-corrupt" });
    const dir = path.join(roots[0]!, ".scopes", scopeIdOf(scopeOfApiKey(KEY)), "refused-corrupt");
    const bin = readdirSync(dir, { recursive: true, encoding: "utf8" }).find((f) => f.endsWith(".bin"))!;
    truncateSync(path.join(dir, bin), 100);
    const t2 = await complete([...h1, { role: "assistant", content: t1.text }, c.user(2)], { kv_cache: "refused-corrupt" });
    expect(cached(t2)).toBe(0);

    const after = await metrics();
    const delta = (name: string): number => after.get(name)! - before.get(name)!;
    expect(delta('kvkeep_cache_misses_total{reason="foreign"}')).toBe(1);
    expect(delta('kvkeep_cache_misses_total{reason="corrupt"}')).toBe(1);
    expect(delta('kvkeep_cache_misses_total{reason="none"}')).toBe(1); // the corrupt conversation's first turn
    expect(delta('kvkeep_cache_hits_total{source="own"}') + delta('kvkeep_cache_hits_total{source="prefix"}')).toBe(0);
  });
});
