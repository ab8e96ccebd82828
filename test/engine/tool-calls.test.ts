/**
 * Tool calls in the node-llama-cpp adapter, on the real engine and the tiny generated model.
 * In auto mode a call is whatever the model opens with the chat wrapper's call prefix; a
 * random model never writes ChatML's `||call: `, so these tests give the wrapper a prefix the
 * model does write: its own greedy reply's opening, learnt in a first run (the tools'
 * description is fixed text, so the prompt does not depend on the prefix).
 */
import { ChatMLChatWrapper, type ChatModelFunctions, type ChatWrapperSettings, LlamaText, type LlamaModel } from "node-llama-cpp";
import { beforeAll, describe, expect, it } from "vitest";
import { type ChatMessage, createLlamaCppCompletion, type LlamaTool } from "../../src/engines/node-llama-cpp/index.js";
import { openKvCacheStore } from "../../src/index.js";
import { loadFixtureModel } from "../fixtures/engine.js";
import { tempDir } from "../helpers/temp-root.js";

let model: LlamaModel;
beforeAll(async () => {
  ({ model } = await loadFixtureModel("tiny"));
});

/** ChatML with a call prefix of our choosing and a tools description that does not mention it. */
class PrefixWrapper extends ChatMLChatWrapper {
  override readonly settings: ChatWrapperSettings;

  constructor(prefix: string) {
    super();
    const functions = ChatMLChatWrapper.defaultSettings.functions;
    this.settings = { ...ChatMLChatWrapper.defaultSettings, functions: { ...functions, call: { ...functions.call, prefix, prefixAlternateMatches: [], optionalPrefixSpace: false } } };
  }

  override generateAvailableFunctionsSystemText(functions: ChatModelFunctions): LlamaText {
    return LlamaText(`Tools: ${Object.keys(functions).join(", ")}.`);
  }
}

const tools: LlamaTool[] = [
  { name: "lookup", description: "Look a word up.", params: { type: "object", properties: { word: { type: "string", maxLength: 8 } }, required: ["word"] }, strict: true },
  { name: "count", params: { type: "object", properties: { n: { type: "integer" }, exact: { type: "boolean" } } } },
];
const history: ChatMessage[] = [
  { role: "system", content: "You may look words up." },
  { role: "user", content: "What does 'kvkeep' mean?" },
];

function checkArguments(name: string, args: string): void {
  const value = JSON.parse(args) as Record<string, unknown>;
  if (name === "lookup") {
    expect(Object.keys(value)).toEqual(["word"]);
    expect(typeof value.word === "string" && value.word.length <= 8).toBe(true);
  } else {
    expect(name).toBe("count");
    expect(Number.isInteger(value.n)).toBe(true);
    expect(typeof value.exact).toBe("boolean");
  }
}

describe("tool calls in auto mode", () => {
  it("a call the model opens with the wrapper's prefix is finished under the grammars; the text before it is the reply's text", async () => {
    // What the model writes greedily with these tools described (a prefix it never writes), run
    // the same way as below (a fresh root: primed, then the rest), so the numbers are the same.
    const probe = createLlamaCppCompletion({ model, store: openKvCacheStore({ root: tempDir() }), contextSize: 4096, chatWrapper: new PrefixWrapper("\u0001never\u0001") });
    const plain = await probe.completion({ history, tools, kvCache: true, temperature: 0, maxTokens: 16 });
    await probe.dispose();
    expect(plain.toolCalls).toBeUndefined();
    expect(plain.text.length).toBeGreaterThanOrEqual(6);
    // Its characters 2..4 become the call prefix: the model now "opens a call" after two characters.
    const prefix = plain.text.slice(2, 5);
    const before = plain.text.slice(0, plain.text.indexOf(prefix));

    const store = openKvCacheStore({ root: tempDir() });
    const adapter = createLlamaCppCompletion({ model, store, contextSize: 4096, chatWrapper: new PrefixWrapper(prefix) });
    let streamed = "";
    const deltas: Array<{ index: number; id?: string; name?: string; arguments?: string }> = [];
    const r = await adapter.completion({
      history,
      tools,
      kvCache: true,
      temperature: 0,
      maxTokens: 120,
      onToken: (piece) => (streamed += piece),
      onToolCall: (d) => deltas.push(d),
    });
    expect(r.text).toBe(before);
    expect(streamed).toBe(before); // nothing of the prefix was streamed as text
    expect(r.toolCalls).toHaveLength(1);
    const call = r.toolCalls![0]!;
    checkArguments(call.name, call.arguments);
    expect(deltas[0]).toEqual({ index: 0, id: call.id, name: call.name });
    expect(deltas.slice(1).map((d) => d.arguments).join("")).toBe(call.arguments);

    // The next step (the call answered) resumes past the call: the whole previous prompt and the call come from the cache.
    const next = await adapter.completion({
      history: [...history, { role: "assistant", content: r.text, toolCalls: r.toolCalls }, { role: "tool", toolCallId: call.id, content: '{"found": true}' }],
      tools,
      kvCache: true,
      temperature: 0,
      maxTokens: 4,
      toolChoice: "none",
    });
    expect(next.stats.source).toBe("own");
    expect(next.stats.reusedTokens).toBeGreaterThanOrEqual(r.stats.promptTokens + r.stats.completionTokens - 1);
    await adapter.dispose();
    await store.close();
  });
});

/** ChatML with parallel calls: `between` separates two calls of one reply. */
class ParallelWrapper extends ChatMLChatWrapper {
  override readonly settings: ChatWrapperSettings;

  constructor(between: string) {
    super();
    const defaults = ChatMLChatWrapper.defaultSettings;
    this.settings = {
      ...defaults,
      functions: {
        ...defaults.functions,
        parallelism: { call: { sectionPrefix: "", betweenCalls: between, sectionSuffix: "" }, result: { sectionPrefix: "\n", betweenResults: "\n", sectionSuffix: "\n" } },
      },
    };
  }
}

describe("parallel calls", () => {
  it("where the wrapper has parallel calls, a reply makes another call when the model starts one; the next step reuses them all", async () => {
    const ask: ChatMessage[] = [{ role: "user", content: "Do both." }];
    // One call (the model never writes the separator "\u0001"); then what the model writes right after it.
    const one = createLlamaCppCompletion({ model, store: openKvCacheStore({ root: tempDir() }), contextSize: 4096, chatWrapper: new ParallelWrapper("\u0001") });
    const first = await one.completion({ history: ask, tools, toolChoice: "required", kvCache: false, temperature: 0, maxTokens: 200 });
    expect(first.toolCalls).toHaveLength(1);
    const c = first.toolCalls![0]!;
    const after = await one.completion({ history: [...ask, { role: "assistant", content: `||call: ${c.name}(${c.arguments})` }], tools, kvCache: false, temperature: 0, maxTokens: 1 });
    await one.dispose();
    // With that character as the separator, the model "starts another call" after the first.
    const store = openKvCacheStore({ root: tempDir() });
    const two = createLlamaCppCompletion({ model, store, contextSize: 4096, chatWrapper: new ParallelWrapper(after.text) });
    const r = await two.completion({ history: ask, tools, toolChoice: "required", kvCache: true, temperature: 0, maxTokens: 300 });
    expect(r.toolCalls!.length).toBeGreaterThanOrEqual(2);
    expect(r.toolCalls![0]!.name).toBe(c.name);
    for (const call of r.toolCalls!) checkArguments(call.name, call.arguments);
    expect(new Set(r.toolCalls!.map((t) => t.id)).size).toBe(r.toolCalls!.length);
    // One-call replies when parallel calls are off.
    const single = await two.completion({ history: ask, tools, toolChoice: "required", parallelToolCalls: false, kvCache: false, temperature: 0, maxTokens: 300 });
    expect(single.toolCalls).toHaveLength(1);
    const next = await two.completion({
      history: [...ask, { role: "assistant", content: "", toolCalls: r.toolCalls }, ...r.toolCalls!.map((t): ChatMessage => ({ role: "tool", toolCallId: t.id, content: "1" }))],
      tools,
      toolChoice: "none",
      kvCache: true,
      temperature: 0,
      maxTokens: 4,
    });
    expect(next.stats.reusedTokens).toBeGreaterThanOrEqual(r.stats.promptTokens + r.stats.completionTokens - 1);
    await two.dispose();
    await store.close();
  });
});

describe("forced calls", () => {
  it("a forced call cut by maxTokens is not returned (finishReason length); what was written counts, within the budget", async () => {
    const adapter = createLlamaCppCompletion({ model, store: openKvCacheStore({ root: tempDir() }), contextSize: 4096 });
    const r = await adapter.completion({ history, tools, toolChoice: { name: "lookup" }, kvCache: false, temperature: 0, maxTokens: 12 });
    expect(r.toolCalls).toBeUndefined();
    expect(r.stats.finishReason).toBe("length");
    expect(r.stats.completionTokens).toBeGreaterThan(0); // the call's opening, written before the budget ran out
    expect(r.stats.completionTokens).toBeLessThanOrEqual(12);
    await adapter.dispose();
  });

  it("required: one of the tools, its arguments valid; a named tool: that one", async () => {
    const adapter = createLlamaCppCompletion({ model, store: openKvCacheStore({ root: tempDir() }), contextSize: 4096 });
    const any = await adapter.completion({ history, tools, toolChoice: "required", kvCache: false, temperature: 0, maxTokens: 100 });
    expect(any.toolCalls).toHaveLength(1);
    checkArguments(any.toolCalls![0]!.name, any.toolCalls![0]!.arguments);
    const named = await adapter.completion({ history, tools, toolChoice: { name: "count" }, kvCache: false, temperature: 0, maxTokens: 100 });
    expect(named.toolCalls!.map((c) => c.name)).toEqual(["count"]);
    checkArguments("count", named.toolCalls![0]!.arguments);
    expect(named.text).toBe("");
    await adapter.dispose();
  });

  it("refuses what it cannot honour before the turn starts (INVALID_ARGUMENT naming the parameter)", async () => {
    const adapter = createLlamaCppCompletion({ model, store: openKvCacheStore({ root: tempDir() }), contextSize: 4096 });
    const refused = (extra: object) => adapter.completion({ history, kvCache: false, maxTokens: 1, ...extra });
    await expect(refused({ tools, toolChoice: { name: "nope" } })).rejects.toMatchObject({ code: "INVALID_ARGUMENT", argument: "toolChoice" });
    await expect(refused({ toolChoice: "required" })).rejects.toMatchObject({ argument: "toolChoice" });
    await expect(refused({ tools: [{ name: "a b" }] })).rejects.toMatchObject({ argument: "tools" });
    await expect(refused({ tools: [{ name: "f", params: { type: "string", pattern: "x" }, strict: true }] })).rejects.toMatchObject({ argument: "tools" });
    await expect(refused({ responseFormat: { type: "json_schema", schema: { type: "number", minimum: 1 }, strict: true } })).rejects.toMatchObject({ argument: "responseFormat" });
    await expect(refused({ tools, responseFormat: { type: "json_object" } })).rejects.toMatchObject({ argument: "responseFormat" });
    await expect(refused({ history: [...history, { role: "tool", toolCallId: "x", content: "1" }] })).rejects.toMatchObject({ argument: "history" });
    await adapter.dispose();
  });
});

describe("rendering a history with tool calls", () => {
  it("tool results render in the order of the calls, whatever order they are sent in (one prompt, one cache key)", async () => {
    const store = openKvCacheStore({ root: tempDir() });
    const adapter = createLlamaCppCompletion({ model, store, contextSize: 4096 });
    const calls = [
      { id: "call_1", name: "lookup", arguments: '{"word": "kv"}' },
      { id: "call_2", name: "count", arguments: '{"n": 2, "exact": true}' },
    ];
    const asked: ChatMessage = { role: "assistant", content: "", toolCalls: calls };
    const r1: ChatMessage = { role: "tool", toolCallId: "call_1", content: "key-value" };
    const r2: ChatMessage = { role: "tool", toolCallId: "call_2", content: "2" };
    const a = await adapter.completion({ history: [...history, asked, r1, r2], tools, kvCache: true, temperature: 0, maxTokens: 6, toolChoice: "none" });
    const b = await adapter.completion({ history: [...history, asked, r2, r1], tools, kvCache: true, temperature: 0, maxTokens: 6, toolChoice: "none" });
    expect(b.text).toBe(a.text);
    expect(b.stats.promptTokens).toBe(a.stats.promptTokens);
    await adapter.dispose();
    await store.close();
  });
});
