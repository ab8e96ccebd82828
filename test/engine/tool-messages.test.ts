/**
 * The pure parts of tool calls: how a conversation with calls is keyed (messages.ts) and how a
 * client's JSON schema becomes the grammar's (json-schema.ts).
 */
import { describe, expect, it } from "vitest";
import { toGrammarSchema } from "../../src/engines/node-llama-cpp/json-schema.js";
import { type ChatMessage, decodeHistory, encodeHistory, replyMessage, TOOL_CALLS_ROLE, TOOL_RESULTS_ROLE } from "../../src/engines/node-llama-cpp/messages.js";
import { autoCacheKey, autoLookupHistory } from "../../src/keys/auto-key.js";

const call = (id: string, name = "f", args = "{}") => ({ id, name, arguments: args });

describe("keying a conversation with tool calls", () => {
  it("an agent step's lookup key is exactly the key the previous step committed (one message for the calls, one for all their results)", () => {
    const opening: ChatMessage[] = [
      { role: "system", content: "s" },
      { role: "user", content: "u" },
    ];
    const calls = [call("call_a", "f", '{"x": 1}'), call("call_b", "g", "{}")];
    // Step 1 committed [opening..., reply]; step 2 sends the reply back and both results (in any order).
    const committed = autoCacheKey([...encodeHistory(opening), replyMessage("", calls)]);
    const step2 = encodeHistory([
      ...opening,
      { role: "assistant", content: "", toolCalls: calls },
      { role: "tool", toolCallId: "call_b", content: "2" },
      { role: "tool", toolCallId: "call_a", content: "1" },
    ]);
    expect(step2.map((m) => m.role)).toEqual(["system", "user", TOOL_CALLS_ROLE, TOOL_RESULTS_ROLE]);
    expect(autoCacheKey(autoLookupHistory(step2))).toBe(committed);
    // Results are kept in the order of the calls.
    expect(decodeHistory(step2)[3]).toEqual({ kind: "tool-results", results: [{ id: "call_a", content: "1" }, { id: "call_b", content: "2" }] });
    // Messages without tools pass through as the same objects (the key chain remembers keys per object).
    expect(step2[0]).toBe(opening[0]);
  });

  it("a different call (id, name or arguments) or text is a different key", () => {
    const base = [{ role: "user", content: "u" }];
    const key = (text: string, c: ReturnType<typeof call>) => autoCacheKey([...base, replyMessage(text, [c])]);
    const k = key("", call("call_a", "f", "{}"));
    expect(new Set([k, key("", call("call_b")), key("", call("call_a", "g")), key("", call("call_a", "f", '{"a":1}')), key("x", call("call_a"))]).size).toBe(5);
    expect(replyMessage("plain", [])).toEqual({ role: "assistant", content: "plain" });
  });

  it("refuses results without their call, calls without their results, duplicate ids and kvkeep's own roles", () => {
    const u: ChatMessage = { role: "user", content: "u" };
    const asked: ChatMessage = { role: "assistant", content: "", toolCalls: [call("call_a"), call("call_b")] };
    const r = (id: string): ChatMessage => ({ role: "tool", toolCallId: id, content: "1" });
    const refused = (h: ChatMessage[]) => {
      try {
        encodeHistory(h);
      } catch (error) {
        return error;
      }
      return null;
    };
    expect(refused([u, r("call_a")])).toMatchObject({ code: "INVALID_ARGUMENT", argument: "history" });
    expect(refused([u, asked, r("call_a")])).toMatchObject({ message: expect.stringContaining("call_b") });
    expect(refused([u, asked, r("call_a"), r("call_a"), r("call_b")])).toMatchObject({ message: expect.stringContaining("second time") });
    expect(refused([u, asked, r("call_a"), r("call_c")])).toMatchObject({ message: expect.stringContaining("call_c") });
    expect(refused([u, { role: "assistant", content: "", toolCalls: [call("x"), call("x")] }, r("x")])).toMatchObject({ argument: "history" });
    expect(refused([u, { role: TOOL_CALLS_ROLE, content: "{}" }])).toMatchObject({ argument: "history" });
    expect(refused([u, { role: "user", content: "u", toolCalls: [call("x")] }])).toMatchObject({ argument: "history" });
    expect(refused([u, asked, r("call_b"), r("call_a"), u])).toBeNull();
  });
});

describe("a client's JSON schema as the grammar's", () => {
  const strict = { strict: true, argument: "tools", path: "tools[0].params" };
  const loose = { ...strict, strict: false };

  it("keeps what the grammar enforces and maps the rest onto it (anyOf, definitions, type lists, bare objects)", () => {
    expect(
      toGrammarSchema(
        {
          $schema: "https://json-schema.org/draft/2020-12/schema",
          title: "T",
          type: "object",
          properties: {
            a: { type: ["string", "null"], description: "a or nothing" },
            b: { anyOf: [{ type: "integer" }, { $ref: "#/definitions/B" }] },
            c: { type: "array", items: { enum: ["x", 1, true, null] }, maxItems: 3 },
            d: { type: "string", format: "date", default: "2020-01-01" },
          },
          required: ["a", "b", "c", "d"],
          additionalProperties: false,
          definitions: { B: { type: "object" } },
        },
        strict,
      ),
    ).toEqual({
      type: "object",
      properties: {
        a: { type: ["string", "null"], description: "a or nothing" },
        b: { oneOf: [{ type: "integer" }, { $ref: "#/$defs/B" }] },
        c: { type: "array", items: { enum: ["x", 1, true, null] }, maxItems: 3 },
        d: { type: "string", format: "date" },
      },
      $defs: { B: { type: "object", additionalProperties: true } },
    });
  });

  it("refuses under strict what it cannot enforce, naming where; ignores it otherwise", () => {
    for (const [schema, where] of [
      [{ type: "string", pattern: "^a" }, ".pattern"],
      [{ type: "object", properties: { n: { type: "number", minimum: 0 } } }, ".properties.n.minimum"],
      [{ type: "string", format: "email" }, ".format"],
      [{ allOf: [{ type: "string" }] }, ".allOf"],
    ] as const) {
      expect(() => toGrammarSchema(schema, strict)).toThrow(new RegExp(`tools\\[0\\]\\.params${where.replace(/\./g, "\\.")}`));
    }
    expect(toGrammarSchema({ type: "string", pattern: "^a" }, loose)).toEqual({ type: "string" });
    expect(toGrammarSchema({ type: "object", properties: { n: { type: "number", minimum: 0 } } }, loose)).toEqual({ type: "object", properties: { n: { type: "number" } } });
    expect(() => toGrammarSchema({ $ref: "#" }, loose)).toThrow(/\$ref/);
    expect(() => toGrammarSchema({ type: "object", properties: {}, required: ["x"] }, loose)).toThrow(/"x" is required/);
    expect(() => toGrammarSchema({ type: "uuid" }, loose)).toThrow(/unknown type/);
  });
});
