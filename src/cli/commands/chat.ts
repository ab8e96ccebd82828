/**
 * `kvkeep chat`: its entry in the command table. `chatOptions` turns the parsed flags into
 * the chat's `ChatOptions` (pure: a bad session name, scope or number is a USAGE error before
 * anything loads); `run` imports the chat — node-llama-cpp loads only to chat (src/cli/chat/).
 */
import os from "node:os";
import { assertScope } from "../../keys/scope.js";
import { assertCustomKey } from "../../keys/safe-key.js";
import type { ChatOptions } from "../chat/run.js";
import { type Command, NO_ARGUMENTS, type OptionSpec, type OptionValues } from "../command.js";
import { usageError } from "../errors.js";
import { integerOption, requiredText, textOption } from "../option-values.js";
import { ADOPT_OPTION } from "../root.js";

const CHAT_OPTIONS: Readonly<Record<string, OptionSpec>> = {
  model: {
    type: "string",
    value: "PATH|URI",
    help: "the model (required): a GGUF file, an hf: URI (hf:Qwen/Qwen3-0.6B-GGUF:Q8_0) or a URL, downloaded once with progress, as kvkeep serve does",
  },
  session: {
    type: "string",
    value: "NAME",
    help: "keep the conversation under this name and resume it when started again with the same name (default: a conversation kept only while the chat runs)",
  },
  system: { type: "string", value: "TEXT", help: "the system prompt (a resumed session keeps the one it was started with unless this is given)" },
  "models-dir": { type: "string", value: "DIR", help: "where URIs are downloaded to (default node-llama-cpp's ~/.node-llama-cpp/models)" },
  ctx: { type: "string", value: "N", help: "context size in tokens (default: the model's, at most 4096); part of the cache's identity" },
  threads: { type: "string", value: "N", help: "CPU threads (default: the machine's)" },
  "max-tokens": { type: "string", value: "N", help: "longest reply in tokens (default: until the model ends it or the context is full)" },
  scope: {
    type: "string",
    value: "SCOPE",
    help: "whose conversation this is (a user, a tenant): its caches and transcript are that scope's only, as an app's scope",
  },
  ...ADOPT_OPTION,
};

/**
 * The chat's options from `kvkeep chat`'s parsed flags (global ones included) and the resolved
 * cache root. Throws a USAGE `CliError` for a missing model or a bad value. Pure.
 */
export function chatOptions(values: OptionValues, root: string): ChatOptions {
  const modelSpec = requiredText(values, "model", "a GGUF model file, an hf: URI (hf:Qwen/Qwen3-0.6B-GGUF:Q8_0) or a URL");
  const session = textOption(values, "session") ?? null;
  const scope = textOption(values, "scope");
  try {
    // The session is the cache's key: one safe path component, not an auto key or .kvkeep.
    if (session !== null) assertCustomKey(session, "--session");
    if (scope !== undefined) assertScope(scope, "--scope");
  } catch (error) {
    throw usageError((error as Error).message);
  }
  const system = values.system;
  return {
    modelSpec,
    modelsDir: textOption(values, "models-dir") ?? null,
    session,
    // An empty --system is a choice (no system prompt), unlike an empty --session.
    system: typeof system === "string" ? system : Array.isArray(system) ? system.at(-1) : undefined,
    contextSize: integerOption(values, "ctx", { min: 64, max: 1 << 24 }) ?? null,
    threads: integerOption(values, "threads", { min: 1, max: 4096 }) ?? Math.max(1, os.availableParallelism()),
    maxTokens: integerOption(values, "max-tokens", { min: 1, max: 1 << 24 }),
    scope,
    root,
    adopt: values.adopt === true,
    json: values.json === true,
  };
}

export const chatCommand: Command = {
  name: "chat",
  summary: "talk to a local model in the terminal; a named session keeps its KV cache and resumes from it",
  usage: "kvkeep chat --model PATH|hf:URI|URL [--session NAME] [options]",
  description:
    "A conversation with a local model in the terminal: replies stream as they are generated, and after each one a line says how many prompt tokens came from kvkeep's cache and how soon the first token came. With --session the conversation is kept (its messages in the root's .kvkeep/chat/, its KV cache under the session's name) and starting the chat again with the same name resumes it from its cache. In the chat: /new starts over, /history, /help, /exit, Ctrl-D or Ctrl-C twice quits, Ctrl-C stops a reply. Without a terminal it reads one message per line of stdin; with --json it prints one JSON object per event.",
  options: CHAT_OPTIONS,
  positionals: NO_ARGUMENTS,
  examples: [
    ["kvkeep chat --model ./qwen3-0.6b.gguf --session work", "talk; run it again later to resume 'work' from its cache"],
    ["kvkeep chat --model hf:Qwen/Qwen3-0.6B-GGUF:Q8_0 --system 'Be brief.'", "download the model once, chat without keeping the conversation"],
    ["printf 'hello\\n' | kvkeep --json chat --model m.gguf --session s", "one scripted turn; its reply and cache figures as JSON"],
  ],
  async run(ctx) {
    const options = chatOptions(ctx.options, ctx.root);
    // Imported only now: the CLI loads node-llama-cpp only to chat (or serve).
    const { chatUntilEnd } = await import("../chat/run.js");
    return chatUntilEnd(options, ctx.io);
  },
};
