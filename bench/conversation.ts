/**
 * Shared set-up for the engine benchmarks: a conversation of about `targetTokens` history
 * tokens on the realistic model, whose cached state (everything before the new user turn)
 * can be committed under as many kvkeep keys as there are repeats.
 */
import path from "node:path";
import type { LlamaContextSequence, LlamaModel, Token } from "node-llama-cpp";
import { generateConfigHash, type CacheMessage, type KvCacheSession } from "../src/index.js";
import { greedyGenerate, renderChat, type ChatMessage } from "../test/fixtures/engine.js";

export interface BenchConversation {
  /** The history of the measured turn (ends with the new user message). */
  history: CacheMessage[];
  /** Its rendered prompt. */
  prompt: Token[];
  /** The state before the new turn, saved as a plain file (for the raw-engine floor). */
  statePath: string;
  /** Commit that state under `key` (as a primed cache) in `session`. */
  commitAs(session: KvCacheSession, key: string): Promise<void>;
}

export async function prepareConversation(
  model: LlamaModel,
  sequence: LlamaContextSequence,
  targetTokens: number,
  dir: string,
): Promise<BenchConversation> {
  // Byte-level vocab: about one token per character.
  const text = "Policy: ".concat("be helpful and brief. ".repeat(Math.ceil(targetTokens / 22))).slice(0, targetTokens - 60);
  const system: CacheMessage = { role: "system", content: text };
  const h1: CacheMessage[] = [system, { role: "user", content: "What is the return policy?" }];
  await sequence.clearHistory();
  const out = await greedyGenerate(sequence, renderChat(model, h1 as ChatMessage[]), 24);
  const reply = model.detokenize(out.endedWithEog ? out.tokens.slice(0, -1) : out.tokens);
  const history: CacheMessage[] = [...h1, { role: "assistant", content: reply }, { role: "user", content: "And for monitors?" }];
  const statePath = path.join(dir, `state-${targetTokens}.bin`);
  await sequence.saveStateToFile(statePath);
  const configHash = generateConfigHash(system.content);
  return {
    history,
    prompt: renderChat(model, history as ChatMessage[]),
    statePath,
    async commitAs(session, key) {
      const turn = await session.beginTurn({
        kind: "custom",
        customKey: key,
        configHash,
        primeIfMissing: (p) => sequence.saveStateToFile(p).then(() => undefined),
      });
      await session.rollback(turn); // the store keeps committed state: the primed file stays
    },
  };
}
