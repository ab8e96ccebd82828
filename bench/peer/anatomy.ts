/**
 * What a regenerate and a new chat cost kvkeep, part by part, in one process (node-llama-cpp's default
 * binary: its local build when there is one). A conversation like the table's (a 1 200-token
 * system prompt, 5 turns of 120-character questions and 32-token replies) is cached through
 * the adapter; another conversation then runs, so the engine no longer holds it; then its
 * last reply is regenerated (the history up to the last question, sent again). Beside the
 * adapter's time to first token, node-llama-cpp alone does the same work on a context of its
 * own: load the whole state file, cut it back to the prompt, evaluate the rest and sample the
 * first token; and loads a state holding only the kept tokens — what a store that reads only
 * what a turn keeps (chunks) would load. The rest of kvkeep's time is its bookkeeping.
 * A new chat with the same system prompt: kvkeep primes its cache from another conversation's
 * (load it, cut it back to the system prompt, save that as the new cache's first state), then
 * evaluates the first question; node-llama-cpp alone, holding that other conversation, only
 * cuts and evaluates. The prime's save is timed apart.
 */
import { mkdtempSync, rmSync, statSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { getLlama, LlamaLogLevel, resolveChatWrapper, type Token } from "node-llama-cpp";
import { createLlamaCppCompletion } from "../../src/engines/node-llama-cpp/index.js";
import { renderPrompt } from "../../src/engines/node-llama-cpp/render.js";
import { openKvCacheStore } from "../../src/index.js";
import type { CacheMessage } from "../../src/types.js";
import { median, nowMs } from "../lib.js";
import { filler, SYSTEM_CHARS, USER_CHARS } from "./scenarios.js";
import { REPLY_TOKENS } from "./targets.js";

export interface NewChatAnatomy {
  promptTokens: number;
  reusedTokens: number;
  kvkeepTtftMs: number;
  kvkeepLoadMs: number;
  /** node-llama-cpp alone, its sequence holding a conversation with the same system prompt. */
  floorCutEvaluateFirstTokenMs: number;
  /** Saving a state of the system prompt alone (what kvkeep's prime writes). */
  floorSavePrimeMs: number;
  primeBytes: number;
}

export interface RegenerateAnatomy {
  buildType: string;
  promptTokens: number;
  stateTokens: number;
  stateBytes: number;
  keptBytes: number;
  /** Medians over the repeats, ms. */
  kvkeepTtftMs: number;
  kvkeepLoadMs: number;
  floorLoadFullMs: number;
  floorLoadKeptMs: number;
  floorCutMs: number;
  floorEvaluateFirstTokenMs: number;
  evaluatedTokens: number;
  newChat: NewChatAnatomy;
}

export async function regenerateAnatomy(options: { modelPath: string; threads: number; repeats: number }): Promise<RegenerateAnatomy> {
  const root = mkdtempSync(path.join(os.tmpdir(), "kvkeep-peer-regen-"));
  const llama = await getLlama({ gpu: false, build: "never", progressLogs: false, maxThreads: options.threads, logLevel: LlamaLogLevel.error });
  const model = await llama.loadModel({ modelPath: options.modelPath });
  const store = openKvCacheStore({ root, onRollback: "keep-committed" });
  const adapter = createLlamaCppCompletion({ model, store, contextSize: 4096, threads: options.threads, modelId: "peer" });
  try {
    const turn = (history: CacheMessage[], maxTokens = REPLY_TOKENS) => adapter.completion({ history, kvCache: true, maxTokens, temperature: 0 });
    // The conversations to regenerate: one per repeat, so each regenerate finds its own state.
    const conversations: CacheMessage[][] = [];
    for (let r = 0; r < options.repeats; r++) {
      const history: CacheMessage[] = [{ role: "system", content: filler(`Regenerate ${r} rules`, SYSTEM_CHARS) }];
      for (let t = 1; t <= 5; t++) {
        history.push({ role: "user", content: filler(`Turn ${t} question`, USER_CHARS) });
        history.push({ role: "assistant", content: (await turn(history)).text });
      }
      conversations.push(history);
    }
    const other: CacheMessage[] = [{ role: "system", content: filler("Another conversation", SYSTEM_CHARS) }, { role: "user", content: "hello" }];
    const kvkeepTtft: number[] = [];
    const kvkeepLoad: number[] = [];
    let evaluatedTokens = 0;
    let promptTokens = 0;
    for (const history of conversations) {
      await turn(other, 1); // the engine holds another conversation now
      const result = await turn(history.slice(0, -1), 1);
      kvkeepTtft.push(result.stats.ttftMs);
      kvkeepLoad.push(result.stats.loadMs);
      evaluatedTokens = result.stats.evaluatedTokens;
      promptTokens = result.stats.promptTokens;
    }

    // New chats with the system prompt of a cached conversation, the engine holding another one.
    const newChatTtft: number[] = [];
    const newChatLoad: number[] = [];
    let newChatReused = 0;
    let newChatPrompt = 0;
    for (const [i, history] of conversations.entries()) {
      await turn(other, 1);
      const result = await turn([history[0]!, { role: "user", content: filler(`A new chat ${i} asks`, USER_CHARS) }], 1);
      newChatTtft.push(result.stats.ttftMs);
      newChatLoad.push(result.stats.loadMs);
      newChatReused = result.stats.reusedTokens;
      newChatPrompt = result.stats.promptTokens;
    }

    // node-llama-cpp alone: the same state (prompt + reply of the last turn) from a file.
    const context = await model.createContext({ contextSize: 4096, threads: options.threads, sequences: 1 });
    const sequence = context.getSequence();
    const wrapper = resolveChatWrapper(model);
    const history = conversations[0]!;
    const full = renderPrompt(model, wrapper, history, undefined).tokens;
    const prompt = renderPrompt(model, wrapper, history.slice(0, -1), undefined).tokens;
    await sequence.evaluateWithoutGeneratingNewTokens(full.slice(0, -1));
    const fullPath = path.join(root, "full.bin");
    await sequence.saveStateToFile(fullPath);
    const stateTokens = sequence.nextTokenIndex;
    const keep = Math.min(sequence.compareContextTokens(prompt).firstDifferentIndex, prompt.length - 1);
    await sequence.eraseContextTokenRanges([{ start: keep, end: sequence.nextTokenIndex }]);
    const keptPath = path.join(root, "kept.bin");
    await sequence.saveStateToFile(keptPath);
    const loadFull: number[] = [];
    const loadKept: number[] = [];
    const cut: number[] = [];
    const evaluate: number[] = [];
    for (let r = 0; r < options.repeats; r++) {
      await sequence.clearHistory();
      let start = nowMs();
      await sequence.loadStateFromFile(keptPath, { acceptRisk: true });
      loadKept.push(nowMs() - start);
      await sequence.clearHistory();
      start = nowMs();
      await sequence.loadStateFromFile(fullPath, { acceptRisk: true });
      loadFull.push(nowMs() - start);
      start = nowMs();
      await sequence.eraseContextTokenRanges([{ start: keep, end: sequence.nextTokenIndex }]);
      cut.push(nowMs() - start);
      start = nowMs();
      for await (const _token of sequence.evaluate(prompt.slice(keep) as Token[], { temperature: 0, yieldEogToken: true })) break;
      evaluate.push(nowMs() - start);
    }
    // New chat: the sequence holds the whole conversation; cut to the system prompt, evaluate, first token.
    const newChatPromptTokens = renderPrompt(model, wrapper, [history[0]!, { role: "user", content: filler("A new chat asks", USER_CHARS) }], undefined).tokens;
    const cutEvaluate: number[] = [];
    const savePrime: number[] = [];
    const primePath = path.join(root, "prime.bin");
    for (let r = 0; r < options.repeats; r++) {
      await sequence.clearHistory();
      await sequence.loadStateFromFile(fullPath, { acceptRisk: true });
      let start = nowMs();
      const shared = Math.min(sequence.compareContextTokens(newChatPromptTokens).firstDifferentIndex, newChatPromptTokens.length - 1);
      await sequence.eraseContextTokenRanges([{ start: shared, end: sequence.nextTokenIndex }]);
      for await (const _token of sequence.evaluate(newChatPromptTokens.slice(shared) as Token[], { temperature: 0, yieldEogToken: true })) break;
      cutEvaluate.push(nowMs() - start);
      await sequence.eraseContextTokenRanges([{ start: shared, end: sequence.nextTokenIndex }]);
      start = nowMs();
      await sequence.saveStateToFile(primePath);
      savePrime.push(nowMs() - start);
    }
    const primeBytes = statSync(primePath).size;
    await context.dispose();
    return {
      buildType: llama.buildType,
      promptTokens,
      stateTokens,
      stateBytes: statSync(fullPath).size,
      keptBytes: statSync(keptPath).size,
      kvkeepTtftMs: median(kvkeepTtft),
      kvkeepLoadMs: median(kvkeepLoad),
      floorLoadFullMs: median(loadFull),
      floorLoadKeptMs: median(loadKept),
      floorCutMs: median(cut),
      floorEvaluateFirstTokenMs: median(evaluate),
      evaluatedTokens,
      newChat: {
        promptTokens: newChatPrompt,
        reusedTokens: newChatReused,
        kvkeepTtftMs: median(newChatTtft),
        kvkeepLoadMs: median(newChatLoad),
        floorCutEvaluateFirstTokenMs: median(cutEvaluate),
        floorSavePrimeMs: median(savePrime),
        primeBytes,
      },
    };
  } finally {
    await adapter.dispose();
    await store.close();
    await model.dispose();
    await llama.dispose();
    rmSync(root, { recursive: true, force: true });
  }
}
