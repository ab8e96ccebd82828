/**
 * The attack of issue 20 on a real `kvkeep serve` with two API keys, through the official
 * `openai` client: a victim tells the server a PIN in a named session; an attacker with the
 * other key sends new auto-mode chats with the same public system prompt and guessed
 * openings, and watches `usage.prompt_tokens_details.cached_tokens` (one more cached token
 * per correct character gave the PIN away in 41 requests when every client shared one space).
 *
 * The proof is differential: the attacker's figures on the server the victim used must equal,
 * request by request, those of the same requests on a server that never saw the victim — what
 * the attacker's own earlier requests explain, and nothing else. A third server, where both
 * clients share one key (one scope: what every client of a server was before scopes), shows
 * the leak the test would catch. Same-scope reuse keeps working: the victim's new chat starts
 * from its own system prompt, the attacker's second chat from the attacker's first.
 */
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import OpenAI from "openai";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { openaiClient, type ServeProcess, servedModel, startServe } from "./helpers.js";

type Message = OpenAI.ChatCompletionMessageParam;

const VICTIM_KEY = "sk-victim-7f3a9c";
const ATTACKER_KEY = "sk-attacker-51d2e0";
const SHARED_KEY = "sk-one-key-for-both";
const SYSTEM: Message = { role: "system", content: "You are the support assistant of Example Bank. Answer briefly and politely." };
const SECRET = "My account PIN is 4711 and my name is Alice Smith.";
/** The attacker's guesses: wrong and right PIN digits, then the whole secret. */
const GUESSES = [
  "My account PIN is 1",
  "My account PIN is 4",
  "My account PIN is 5",
  "My account PIN is 47",
  "My account PIN is 471",
  "My account PIN is 4711",
  "My account PIN is 4712",
  "My account PIN is 4711 and my name is Bob",
  SECRET,
];

const roots: string[] = [];
const servers: ServeProcess[] = [];
/** Two keys, the victim's and the attacker's (the attacker's from an --api-keys file). */
let scoped: ServeProcess;
/** Only the attacker's key, on a root of its own: what the attacker's requests alone explain. */
let reference: ServeProcess;
/** One key for both clients: one scope, as every client of a server shared one space before scopes. */
let shared: ServeProcess;
/** No keys, --no-prefix-reuse. */
let noReuse: ServeProcess;
let model: string;

const root = (): string => {
  const dir = mkdtempSync(path.join(os.tmpdir(), "kvkeep-scopes-"));
  roots.push(dir);
  return dir;
};

beforeAll(async () => {
  const keysFile = path.join(root(), "keys");
  writeFileSync(keysFile, `# the attacker is a customer too\n${ATTACKER_KEY}\n`, { mode: 0o600 });
  const common = ["--parallel", "1", "--ctx", "2048"];
  [scoped, reference, shared, noReuse] = await Promise.all([
    startServe([...common, "--root", root(), "--api-key", VICTIM_KEY, "--api-keys", keysFile]),
    startServe([...common, "--root", root(), "--api-key", ATTACKER_KEY]),
    startServe([...common, "--root", root(), "--api-key", SHARED_KEY]),
    startServe([...common, "--root", root(), "--no-prefix-reuse"]),
  ]);
  servers.push(scoped, reference, shared, noReuse);
  model = await servedModel(openaiClient(scoped, VICTIM_KEY));
});

afterAll(async () => {
  for (const s of servers) expect(await s.stop(), s.run.stderr()).toBe(0);
  for (const dir of roots) rmSync(dir, { recursive: true, force: true });
});

interface Usage {
  prompt: number;
  cached: number;
}

async function chat(client: OpenAI, messages: Message[], extra: Record<string, unknown> = {}): Promise<Usage & { text: string }> {
  const response = await client.chat.completions.create({
    model,
    messages,
    max_tokens: 8,
    temperature: 0,
    ...extra,
  } as OpenAI.ChatCompletionCreateParamsNonStreaming);
  const usage = response.usage!;
  return { prompt: usage.prompt_tokens, cached: usage.prompt_tokens_details?.cached_tokens ?? -1, text: response.choices[0]!.message.content ?? "" };
}

/** The victim's session: the secret in a named conversation, and one more turn of it. */
async function victimSession(client: OpenAI): Promise<void> {
  const first = await chat(client, [SYSTEM, { role: "user", content: SECRET }], { kv_cache: "bank" });
  await chat(client, [SYSTEM, { role: "user", content: SECRET }, { role: "assistant", content: first.text }, { role: "user", content: "Please remember it." }], {
    kv_cache: "bank",
  });
}

/** The attack: every guess as a new auto-mode chat, then the victim's session name asked for outright. Returns each request's cached tokens. */
async function attack(client: OpenAI): Promise<number[]> {
  const cached: number[] = [];
  for (const guess of GUESSES) cached.push((await chat(client, [SYSTEM, { role: "user", content: guess }])).cached);
  cached.push((await chat(client, [SYSTEM, { role: "user", content: "What did I tell you before?" }], { kv_cache: "bank" })).cached);
  return cached;
}

let referenceFigures: Promise<number[]> | null = null;
/** The attack on the server that never saw the victim (run once): what the attacker's own requests explain. */
function explained(): Promise<number[]> {
  referenceFigures ??= attack(openaiClient(reference, ATTACKER_KEY));
  return referenceFigures;
}

describe("two API keys on one server", () => {
  it("the second key sees 0 tokens of the first key's conversation: its cached_tokens are what its own requests explain, request by request", async () => {
    await victimSession(openaiClient(scoped, VICTIM_KEY));
    const seen = await attack(openaiClient(scoped, ATTACKER_KEY));
    const own = await explained();
    console.log(`two keys: attacker's cached tokens ${seen.join(" ")}; without the victim ${own.join(" ")}; beyond its own: max ${Math.max(...seen.map((c, i) => c - own[i]!))}`);
    expect(seen).toEqual(own);
    // Each scope primes its own system prompt: the attacker's first chat reused nothing.
    expect(seen[0]).toBe(0);
  });

  it("the same attack within one key (one scope, as all clients were before scopes) is what the test catches: the victim's state is lent, a right guess shows", async () => {
    await victimSession(openaiClient(shared, SHARED_KEY));
    const seen = await attack(openaiClient(shared, SHARED_KEY));
    const own = await explained();
    const excess = seen.map((c, i) => c - own[i]!);
    console.log(`one key for both: attacker's cached tokens ${seen.join(" ")}; without the victim ${own.join(" ")}; beyond its own: ${excess.join(" ")}`);
    const at = (guess: string): number => excess[GUESSES.indexOf(guess)]!;
    // The attacker's first chat starts from the victim's state (its system prompt, primed by
    // the victim), and the right guess is cached beyond what its own requests explain — into
    // the victim's message — while wrong guesses are not.
    expect(excess[0]).toBeGreaterThan(0);
    expect(at(SECRET)).toBeGreaterThan(0);
    expect([at("My account PIN is 5"), at("My account PIN is 4712")]).toEqual([0, 0]);
  });

  it("within a key every gain of prefix reuse stays: the victim's new chat starts from the system prompt its session cached, the attacker's second from its first", async () => {
    const victim = await chat(openaiClient(scoped, VICTIM_KEY), [SYSTEM, { role: "user", content: "A new question about my card." }]);
    expect(victim.cached).toBeGreaterThan(0);
    // A key of its own, on the same server: its first chat primes, its second reuses that prime.
    const attacker = openaiClient(reference, ATTACKER_KEY);
    const other: Message = { role: "system", content: "A system prompt nobody on this server used before, for one more test." };
    const first = await chat(attacker, [other, { role: "user", content: "one" }]);
    const second = await chat(attacker, [other, { role: "user", content: "two" }]);
    expect(first.cached).toBe(0);
    expect(second.cached).toBeGreaterThan(0);
    expect(second.cached).toBeLessThan(second.prompt);
  });

  it("a key no one was given is refused (401), and an auto-mode key or a reserved name as kv_cache is a 400, not a 500", async () => {
    await expect(chat(openaiClient(scoped, "sk-guessed"), [SYSTEM, { role: "user", content: "hi" }])).rejects.toMatchObject({ status: 401 });
    for (const name of ["auto-0123456789abcdef", ".scopes"]) {
      await expect(chat(openaiClient(scoped, VICTIM_KEY), [SYSTEM, { role: "user", content: "hi" }], { kv_cache: name })).rejects.toMatchObject({
        status: 400,
        code: "invalid_kv_cache",
        param: "kv_cache",
      });
    }
    expect(scoped.run.stderr()).not.toMatch(/request failed/);
  });

  it("--no-prefix-reuse: a new chat with a known system prompt starts cold, a conversation still resumes its own cache", async () => {
    const client = openaiClient(noReuse);
    const first = await chat(client, [SYSTEM, { role: "user", content: "one" }]);
    const other = await chat(client, [SYSTEM, { role: "user", content: "two" }]);
    expect(other.cached).toBe(0);
    const next = await chat(client, [SYSTEM, { role: "user", content: "one" }, { role: "assistant", content: first.text }, { role: "user", content: "and?" }]);
    expect(next.cached).toBeGreaterThan(0);
  });
});
