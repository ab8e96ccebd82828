/**
 * Conversations with tool calls, as the turn skeleton keys them (pure). The skeleton keys a
 * history by its messages' roles and contents (auto mode: the history without its last
 * message finds the cache the previous turn committed as `history + reply`), so a tool call
 * and its results must be messages whose role and content say everything that renders:
 *
 * - an assistant message that calls tools becomes one `kvkeep:tool-calls` message: its text
 *   and its calls (id, name, arguments as sent), as JSON;
 * - the tool messages that answer it (one per call, in any order) become one
 *   `kvkeep:tool-results` message, so the next step's history is the previous step's history
 *   + the reply + one message: its lookup key is exactly the key the previous step committed.
 *
 * Messages without tools pass through as the very same objects (the key chain remembers keys
 * per message object). Only this module makes the `kvkeep:` roles; callers cannot send them.
 */
import { KvKeepError } from "../../errors.js";
import type { CacheMessage } from "../../types.js";
import type { ToolCall } from "../shared/stats.js";

/** A message as the node-llama-cpp adapter takes it: a `CacheMessage`, with tool calls and results. */
export interface ChatMessage extends CacheMessage {
  /** `role: "assistant"`: the tools this message called (its `content` is the text before them, often ""). */
  toolCalls?: readonly ToolCall[] | undefined;
  /** `role: "tool"`: the id of the call whose result `content` is. */
  toolCallId?: string | undefined;
}

export const TOOL_CALLS_ROLE = "kvkeep:tool-calls";
export const TOOL_RESULTS_ROLE = "kvkeep:tool-results";

/** One message of a decoded history, as the renderer needs it. */
export type DecodedMessage =
  | { kind: "system" | "user" | "assistant"; text: string }
  | { kind: "tool-calls"; text: string; calls: ToolCall[] }
  | { kind: "tool-results"; results: Array<{ id: string; content: string }> };

function invalid(message: string): KvKeepError {
  return new KvKeepError("INVALID_ARGUMENT", message, { argument: "history" });
}

function checkCall(call: unknown, where: string): ToolCall {
  const c = call as Partial<ToolCall> | null;
  if (!c || typeof c !== "object" || typeof c.id !== "string" || c.id.length === 0 || typeof c.name !== "string" || c.name.length === 0 || typeof c.arguments !== "string") {
    throw invalid(`${where} must be { id: string, name: string, arguments: string } (non-empty id and name).`);
  }
  return { id: c.id, name: c.name, arguments: c.arguments };
}

/** The message a reply stands for in the next turn's history: plain text, or text and tool calls. */
export function replyMessage(text: string, calls: readonly ToolCall[]): CacheMessage {
  if (calls.length === 0) return { role: "assistant", content: text };
  return { role: TOOL_CALLS_ROLE, content: JSON.stringify({ text, calls: calls.map((c) => [c.id, c.name, c.arguments]) }) };
}

/**
 * The history as the skeleton keys it. Refuses (INVALID_ARGUMENT, argument "history") tool
 * messages that answer no call of the assistant message before them, calls left without a
 * result, duplicate ids, and the reserved `kvkeep:` roles.
 */
export function encodeHistory(history: readonly ChatMessage[]): CacheMessage[] {
  if (!Array.isArray(history)) return history as CacheMessage[]; // the skeleton refuses it with its own message
  const out: CacheMessage[] = [];
  let i = 0;
  while (i < history.length) {
    const message = history[i]!;
    if (!message || typeof message !== "object") {
      out.push(message);
      i++;
      continue;
    }
    if (message.role === TOOL_CALLS_ROLE || message.role === TOOL_RESULTS_ROLE) {
      throw invalid(`history[${i}].role "${message.role}" is kvkeep's own; send assistant messages with toolCalls and tool messages instead.`);
    }
    if (message.role === "tool") {
      throw invalid(`history[${i}] is a tool result that follows no assistant message calling tools.`);
    }
    if (message.toolCallId !== undefined) throw invalid(`history[${i}] has toolCallId but role "${message.role}"; only tool messages answer calls.`);
    if (message.toolCalls === undefined || (message.role === "assistant" && message.toolCalls.length === 0)) {
      out.push(message);
      i++;
      continue;
    }
    if (message.role !== "assistant") throw invalid(`history[${i}] has toolCalls but role "${message.role}"; only assistant messages call tools.`);
    if (!Array.isArray(message.toolCalls)) throw invalid(`history[${i}].toolCalls must be an array.`);
    const calls = (message.toolCalls as readonly unknown[]).map((c, k) => checkCall(c, `history[${i}].toolCalls[${k}]`));
    const ids = new Set(calls.map((c) => c.id));
    if (ids.size !== calls.length) throw invalid(`history[${i}].toolCalls has two calls with one id.`);
    if (typeof message.content !== "string") throw invalid(`history[${i}].content must be a string ("" when the message only calls tools).`);
    out.push(replyMessage(message.content, calls));
    // The tool messages that answer it.
    const results = new Map<string, string>();
    let j = i + 1;
    for (; j < history.length && history[j]?.role === "tool"; j++) {
      const result = history[j]!;
      const id = result.toolCallId;
      if (typeof id !== "string" || !ids.has(id)) {
        throw invalid(`history[${j}] answers tool call ${JSON.stringify(id)}, which history[${i}] did not make (its calls: ${[...ids].join(", ")}).`);
      }
      if (results.has(id)) throw invalid(`history[${j}] answers tool call ${JSON.stringify(id)} a second time.`);
      if (typeof result.content !== "string") throw invalid(`history[${j}].content must be a string.`);
      results.set(id, result.content);
    }
    const missing = calls.filter((c) => !results.has(c.id)).map((c) => c.id);
    if (missing.length > 0) {
      throw invalid(`history[${i}] calls tools whose results are missing (${missing.join(", ")}): send a tool message with toolCallId for each call after it.`);
    }
    // In the order of the calls: the order tool messages arrive in does not change the prompt.
    out.push({ role: TOOL_RESULTS_ROLE, content: JSON.stringify(calls.map((c) => [c.id, results.get(c.id)!])) });
    i = j;
  }
  return out;
}

function malformed(index: number): KvKeepError {
  return invalid(`history[${index}] is a malformed "${TOOL_CALLS_ROLE}"/"${TOOL_RESULTS_ROLE}" message.`);
}

/** The encoded history's messages as the renderer reads them. */
export function decodeHistory(history: readonly CacheMessage[]): DecodedMessage[] {
  return history.map((m, index): DecodedMessage => {
    if (m.role === "system" || m.role === "user" || m.role === "assistant") return { kind: m.role, text: m.content };
    if (m.role === TOOL_CALLS_ROLE) {
      try {
        const parsed = JSON.parse(m.content) as { text: string; calls: Array<[string, string, string]> };
        if (typeof parsed.text !== "string" || !Array.isArray(parsed.calls)) throw malformed(index);
        return { kind: "tool-calls", text: parsed.text, calls: parsed.calls.map(([id, name, args]) => ({ id, name, arguments: args })) };
      } catch {
        throw malformed(index);
      }
    }
    if (m.role === TOOL_RESULTS_ROLE) {
      try {
        const parsed = JSON.parse(m.content) as Array<[string, string]>;
        if (!Array.isArray(parsed)) throw malformed(index);
        return { kind: "tool-results", results: parsed.map(([id, content]) => ({ id, content })) };
      } catch {
        throw malformed(index);
      }
    }
    throw new KvKeepError("INVALID_ARGUMENT", `history[${index}].role must be "system", "user", "assistant" or "tool".`, { argument: "history" });
  });
}
