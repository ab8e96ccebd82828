import { KvKeepError } from "../errors.js";
import { xxh64Hex } from "./hash.js";

/** A tool as handlers pass it: a name, or an object with `name` (or OpenAI-style `function.name`). */
export type ToolLike = string | { name: string } | { function: { name: string } };

function toolName(tool: ToolLike, index: number): string {
  if (typeof tool === "string") return tool;
  if (tool && typeof tool === "object") {
    if ("name" in tool && typeof tool.name === "string") return tool.name;
    if ("function" in tool && tool.function && typeof tool.function.name === "string") return tool.function.name;
  }
  throw new KvKeepError("INVALID_ARGUMENT", `tools[${index}] has no name; pass tool names or objects with a string "name".`, {
    argument: "tools",
  });
}

/**
 * The config hash of a cache: 16 lowercase hex chars of XXH64 over the system prompt and
 * the *sorted* tool names, so tool order never splits a cache. Synchronous.
 */
export function generateConfigHash(systemPrompt: string | null, tools?: readonly ToolLike[] | null): string {
  if (systemPrompt !== null && typeof systemPrompt !== "string") {
    throw new KvKeepError("INVALID_ARGUMENT", "systemPrompt must be a string or null.", { argument: "systemPrompt" });
  }
  const names = (tools ?? []).map(toolName).sort();
  // JSON keeps the encoding unambiguous (no separator a prompt could contain).
  return xxh64Hex(JSON.stringify(["kvkeep-config-v1", systemPrompt, names]));
}
