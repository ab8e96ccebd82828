/**
 * OpenAI's chat-completions replies: the usage block, the response and stream-chunk bodies,
 * the `kvkeep` field (what kvkeep did for the turn), and the server-sent-event framing. Pure
 * (no I/O). Requests and errors are openai.ts's.
 */
import { randomBytes } from "node:crypto";
import type { CompletionStats, ToolCall } from "../engines/node-llama-cpp/completion.js";

export interface Usage {
  prompt_tokens: number;
  completion_tokens: number;
  total_tokens: number;
  prompt_tokens_details: { cached_tokens: number };
}

/** OpenAI's usage block; `cached_tokens` are the prompt tokens kvkeep supplied from a cache. */
export function usageOf(stats: { promptTokens: number; reusedTokens: number; completionTokens: number }): Usage {
  return {
    prompt_tokens: stats.promptTokens,
    completion_tokens: stats.completionTokens,
    total_tokens: stats.promptTokens + stats.completionTokens,
    prompt_tokens_details: { cached_tokens: stats.reusedTokens },
  };
}

export function completionId(): string {
  return `chatcmpl-${randomBytes(12).toString("hex")}`;
}

export interface CompletionHead {
  id: string;
  created: number;
  model: string;
}

export type FinishReason = "stop" | "length" | "tool_calls";

/** OpenAI's `tool_calls` of a message. */
export function toolCallsBody(calls: readonly ToolCall[]) {
  return calls.map((c) => ({ id: c.id, type: "function" as const, function: { name: c.name, arguments: c.arguments } }));
}

/**
 * What kvkeep did for the turn, in a `kvkeep` field of the response (and of a stream's last
 * chunk): clients that do not know it ignore it; kvkeep's web page shows it.
 */
export interface TurnReport {
  /** Where the reused tokens came from: the conversation's own cache, another's prefix, or none. */
  source: CompletionStats["source"];
  prompt_tokens: number;
  cached_tokens: number;
  /** From the start of the turn (after the queue) to the first generated token. */
  ttft_ms: number | null;
  load_ms: number;
  save_ms: number;
  committed: boolean;
}

export function turnReport(stats: CompletionStats): TurnReport {
  const ms = (v: number): number => Math.round(v * 10) / 10;
  return {
    source: stats.source,
    prompt_tokens: stats.promptTokens,
    cached_tokens: stats.reusedTokens,
    ttft_ms: Number.isFinite(stats.ttftMs) ? ms(stats.ttftMs) : null,
    load_ms: ms(stats.loadMs),
    save_ms: ms(stats.saveMs),
    committed: stats.committed,
  };
}

export function completionBody(
  head: CompletionHead,
  reply: { text: string; toolCalls?: readonly ToolCall[] | undefined },
  finishReason: FinishReason,
  usage: Usage,
  report?: TurnReport,
) {
  const calls = reply.toolCalls?.length ? { tool_calls: toolCallsBody(reply.toolCalls) } : {};
  return {
    id: head.id,
    object: "chat.completion" as const,
    created: head.created,
    model: head.model,
    choices: [
      {
        index: 0,
        message: { role: "assistant" as const, content: calls.tool_calls && reply.text === "" ? null : reply.text, refusal: null, ...calls },
        logprobs: null,
        finish_reason: finishReason,
      },
    ],
    usage,
    ...(report ? { kvkeep: report } : {}),
  };
}

/** A streamed piece of a tool call (OpenAI's `delta.tool_calls[]`). */
export interface ToolCallChunk {
  index: number;
  id?: string;
  type?: "function";
  function: { name?: string; arguments: string };
}

/**
 * One `chat.completion.chunk`. With `include_usage`, every chunk carries `usage: null`
 * and a last chunk with no choices carries the usage, as OpenAI sends them.
 */
export function chunkBody(
  head: CompletionHead,
  choice: { delta: { role?: "assistant"; content?: string; tool_calls?: ToolCallChunk[] }; finishReason: FinishReason | null } | null,
  usage: Usage | null | undefined,
  report?: TurnReport,
) {
  return {
    id: head.id,
    object: "chat.completion.chunk" as const,
    created: head.created,
    model: head.model,
    choices: choice ? [{ index: 0, delta: choice.delta, logprobs: null, finish_reason: choice.finishReason }] : [],
    ...(usage !== undefined ? { usage } : {}),
    ...(report ? { kvkeep: report } : {}),
  };
}

/** A server-sent event carrying `data` as JSON (or the literal `[DONE]`). */
export function sseEvent(data: unknown): string {
  return `data: ${data === "[DONE]" ? data : JSON.stringify(data)}\n\n`;
}
