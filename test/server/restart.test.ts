/**
 * Conversations outlive a server process: two `kvkeep serve` processes on one cache root
 * continue each other's conversations, and a server killed with SIGKILL (between turns or
 * mid-stream) is restarted and continues with the cached tokens it had. Real processes,
 * real HTTP, the official `openai` client.
 */
import { mkdtempSync, rmSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import type OpenAI from "openai";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { openaiClient, type ServeProcess, servedModel, startServe, tokensHeldAfter } from "./helpers.js";

type Message = OpenAI.ChatCompletionMessageParam;

let root: string;
let referenceRoot: string;
const servers = new Set<ServeProcess>();
let model: string;
/** The same configuration on a root of its own: uninterrupted runs that share no cache with the others. */
let reference: ServeProcess;
/** Two servers on `root`, like two workers behind a load balancer. */
let a: ServeProcess;
let b: ServeProcess;

async function serve(on = root): Promise<ServeProcess> {
  // The same threads per context everywhere, so greedy replies agree exactly; one thread,
  // because llama.cpp's thread barriers crawl when other test files load the cores.
  const server = await startServe(["--root", on, "--parallel", "1", "--threads", "1", "--ctx", "4096"]);
  servers.add(server);
  return server;
}

beforeAll(async () => {
  root = mkdtempSync(path.join(os.tmpdir(), "kvkeep-serve-restart-"));
  referenceRoot = mkdtempSync(path.join(os.tmpdir(), "kvkeep-serve-reference-"));
  [reference, a, b] = await Promise.all([serve(referenceRoot), serve(), serve()]);
});

afterAll(async () => {
  await Promise.all([...servers].map((s) => (s.run.child.exitCode === null && s.run.child.signalCode === null ? s.stop() : null)));
  for (const dir of [root, referenceRoot]) rmSync(dir, { recursive: true, force: true });
});

interface Turn {
  text: string;
  finish: string;
  usage: OpenAI.CompletionUsage;
}

async function complete(server: ServeProcess, messages: Message[], extra: Record<string, unknown> = {}): Promise<Turn> {
  const client = openaiClient(server);
  model ??= await servedModel(client);
  const response = await client.chat.completions.create({ model, messages, max_tokens: 16, temperature: 0, ...extra } as OpenAI.ChatCompletionCreateParamsNonStreaming);
  return { text: response.choices[0]!.message.content ?? "", finish: response.choices[0]!.finish_reason, usage: response.usage! };
}

const cached = (turn: Turn): number => turn.usage.prompt_tokens_details?.cached_tokens ?? -1;

function script(tag: string): Message[] {
  return [
    { role: "system", content: `You are the assistant of ${tag}; answer in one short line.` },
    { role: "user", content: `First question of ${tag}: what is a river?` },
    { role: "user", content: `Second question of ${tag}: and a lake?` },
    { role: "user", content: `Third question of ${tag}: and the sea?` },
    { role: "user", content: `Fourth question of ${tag}: and an ocean?` },
  ];
}

/** Drives one auto-mode conversation through the script, turn by turn, on any server. */
function conversation(tag: string) {
  const [system, ...users] = script(tag);
  const history: Message[] = [system!];
  let next = 0;
  return {
    /** The messages of the next turn, without advancing. */
    pending: (): Message[] => [...history, users[next]!],
    async turn(server: ServeProcess): Promise<Turn> {
      const turn = await complete(server, [...history, users[next]!]);
      history.push(users[next++]!, { role: "assistant", content: turn.text });
      return turn;
    },
  };
}

/** The replies of an uninterrupted run of the script on the reference server. */
async function referenceReplies(tag: string, turns: number): Promise<string[]> {
  const chat = conversation(tag);
  const replies: string[] = [];
  for (let t = 0; t < turns; t++) replies.push((await chat.turn(reference)).text);
  return replies;
}

describe("conversations across server processes", () => {
  it("two servers on one root continue each other's conversations with cached tokens and the same replies", async () => {
    const expected = await referenceReplies("shared", 4);
    const chat = conversation("shared");
    const t1 = await chat.turn(a);
    expect(cached(t1)).toBe(0);
    const t2 = await chat.turn(b); // started on a, continued on b
    expect(cached(t2)).toBe(tokensHeldAfter(t1.usage, t1.finish));
    const t3 = await chat.turn(a); // and back
    expect(cached(t3)).toBe(tokensHeldAfter(t2.usage, t2.finish));
    const t4 = await chat.turn(b);
    expect(cached(t4)).toBe(tokensHeldAfter(t3.usage, t3.finish));
    expect([t1.text, t2.text, t3.text, t4.text]).toEqual(expected);
  });

  it("a server killed with SIGKILL (mid-stream, then between turns) restarts and continues with the cached tokens it had", async () => {
    const witness = b; // stays up on the same root throughout
    const expected = await referenceReplies("killed", 4);
    const chat = conversation("killed");
    let server = a;
    const t1 = await chat.turn(server);
    const t2 = await chat.turn(server);

    // Kill it in the middle of streaming turn 3.
    const response = await fetch(`${server.url}/v1/chat/completions`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ model, messages: chat.pending(), max_tokens: 3000, temperature: 0, stream: true }),
    });
    const reader = response.body!.getReader();
    for (let received = ""; (received.match(/data: /g) ?? []).length < 4; ) {
      const { value, done } = await reader.read();
      if (done) throw new Error("the stream ended before the kill");
      received += new TextDecoder().decode(value);
    }
    await server.kill();
    await reader.read().catch(() => null);

    server = await serve();
    const t3 = await chat.turn(server); // turn 3 again: from turn 2's committed state
    expect(cached(t3)).toBe(tokensHeldAfter(t2.usage, t2.finish));

    // Kill it between turns, restart, continue: the cached tokens of an uninterrupted server.
    await server.kill();
    server = await serve();
    const t4 = await chat.turn(server);
    expect(cached(t4)).toBe(tokensHeldAfter(t3.usage, t3.finish));
    expect([t1.text, t2.text, t3.text, t4.text]).toEqual(expected);

    // The server that stayed up was not disturbed by the kills on its root.
    const again = await complete(witness, [{ role: "user", content: "Still there?" }], { max_tokens: 2 });
    expect(again.usage.completion_tokens).toBeGreaterThan(0);
    expect(await server.stop()).toBe(0);
    expect(await witness.stop()).toBe(0);
  });
});
