/**
 * The five scenarios, run on every target, interleaved request by request (the
 * target order rotates each step, so no target always follows another's work). Each target
 * keeps its own conversations (replies differ between engines); the prompts are built the
 * same way for all. The generated model's vocabulary is byte-level: one character, one token.
 */
import type { Message, Sample, Target } from "./targets.js";

export const SYSTEM_CHARS = 1200;
export const USER_CHARS = 120;

export type ScenarioName = "roundRobin" | "afterKill" | "newChat" | "regenerate" | "distinct";

export const SCENARIOS: Array<{ name: ScenarioName; label: string }> = [
  { name: "roundRobin", label: "4 conversations round-robin, shared 1 200-token system prompt, turn 5" },
  { name: "afterKill", label: "turn 6 after SIGKILL of every server" },
  { name: "newChat", label: "new chat, same system prompt" },
  { name: "regenerate", label: "regenerate" },
  { name: "distinct", label: "16 conversations, distinct prompts, turn 3" },
];

export function filler(seed: string, chars: number): string {
  const words = ["policy", "river", "ledger", "orbit", "harbor", "signal", "meadow", "copper", "lantern", "quarry"];
  let text = `${seed}: `;
  for (let i = 0; text.length < chars; i++) text += `${words[(i * 7 + seed.length) % words.length]} `;
  return text.slice(0, chars);
}

export interface RoundOptions {
  readonly round: number;
  readonly conversations: number;
  readonly turns: number;
  readonly newChats: number;
  readonly regenerates: number;
  readonly distinctConversations: number;
  readonly distinctTurns: number;
  /** Called between steps, e.g. to report progress. */
  readonly log: (text: string) => void;
}

/** Every target's samples of each scenario in one round, plus the cold first turn and memory. */
export interface RoundResult {
  samples: Record<string, Record<ScenarioName, Sample[]>>;
  /** The first turn of the first conversation: nothing cached anywhere (a cold prompt). */
  cold: Record<string, Sample>;
  /** Resident memory after the round-robin (4 conversations) and at the end (peak), MiB. */
  memory: Record<string, { afterRoundRobin: number; end: number; peak: number }>;
}

/** Run `step` on every target, the order rotated by `index`. */
async function interleaved(targets: readonly Target[], index: number, step: (target: Target) => Promise<void>): Promise<void> {
  for (let i = 0; i < targets.length; i++) await step(targets[(index + i) % targets.length]!);
}

export async function runRound(targets: readonly Target[], options: RoundOptions): Promise<RoundResult> {
  const names = targets.map((t) => t.name);
  const samples = Object.fromEntries(
    names.map((n) => [n, { roundRobin: [], afterKill: [], newChat: [], regenerate: [], distinct: [] } as Record<ScenarioName, Sample[]>]),
  );
  const cold: Record<string, Sample> = {};
  const memory: RoundResult["memory"] = {};
  const r = options.round;
  let step = 0;
  // Each target's own copy of every conversation: conversation id → messages.
  const histories = new Map<string, Map<string, Message[]>>(names.map((n) => [n, new Map()]));
  const turn = async (target: Target, id: string, scenario: ScenarioName | null, user: string): Promise<void> => {
    const history = histories.get(target.name)!.get(id)!;
    history.push({ role: "user", content: user });
    const { reply, sample } = await target.turn(id, history);
    history.push({ role: "assistant", content: reply });
    if (scenario) samples[target.name]![scenario].push(sample);
    if (!(target.name in cold)) cold[target.name] = sample;
  };
  const open = (id: string, system: string): void => {
    for (const n of names) histories.get(n)!.set(id, [{ role: "system", content: system }]);
  };

  // 1. Conversations sharing one system prompt, round-robin: each turn follows another conversation.
  const shared = filler(`Round ${r} shared rules`, SYSTEM_CHARS);
  const conversations = Array.from({ length: options.conversations }, (_, c) => `r${r}-c${c}`);
  for (const id of conversations) open(id, shared);
  for (let t = 1; t <= options.turns; t++) {
    for (const [c, id] of conversations.entries()) {
      const user = filler(`Turn ${t} question ${c}`, USER_CHARS);
      await interleaved(targets, step++, (target) => turn(target, id, t === options.turns ? "roundRobin" : null, user));
    }
    options.log(`round ${r}: round-robin turn ${t} done`);
  }
  for (const target of targets) memory[target.name] = { afterRoundRobin: target.memory().rssMiB, end: 0, peak: 0 };

  // 2. Every server killed (SIGKILL) and started again; one more turn of each conversation.
  await Promise.all(targets.map((t) => t.kill()));
  for (const target of targets) await target.start();
  for (const [c, id] of conversations.entries()) {
    const user = filler(`Turn ${options.turns + 1} question ${c}`, USER_CHARS);
    await interleaved(targets, step++, (target) => turn(target, id, "afterKill", user));
  }
  options.log(`round ${r}: turn after the restart done`);

  // 3. New chats with the same system prompt.
  for (let i = 0; i < options.newChats; i++) {
    const id = `r${r}-new${i}`;
    open(id, shared);
    const user = filler(`A new chat ${i} asks`, USER_CHARS);
    await interleaved(targets, step++, (target) => turn(target, id, "newChat", user));
  }

  // 4. Regenerate the last reply of a conversation (the server last ran another one).
  for (let i = 0; i < options.regenerates; i++) {
    const id = conversations[i % conversations.length]!;
    await interleaved(targets, step++, async (target) => {
      const history = histories.get(target.name)!.get(id)!;
      history.pop(); // the reply being regenerated
      const { reply, sample } = await target.turn(id, history);
      history.push({ role: "assistant", content: reply });
      samples[target.name]!.regenerate.push(sample);
    });
  }
  options.log(`round ${r}: new chats and regenerates done`);

  // 5. Many conversations, each its own system prompt, round-robin.
  const distinct = Array.from({ length: options.distinctConversations }, (_, c) => `r${r}-d${c}`);
  for (const [c, id] of distinct.entries()) open(id, filler(`Round ${r} conversation ${c} rules`, SYSTEM_CHARS));
  for (let t = 1; t <= options.distinctTurns; t++) {
    for (const [c, id] of distinct.entries()) {
      const user = filler(`Turn ${t} question ${c}`, USER_CHARS);
      await interleaved(targets, step++, (target) => turn(target, id, t === options.distinctTurns ? "distinct" : null, user));
    }
    options.log(`round ${r}: distinct conversations turn ${t} done`);
  }
  for (const target of targets) {
    const m = target.memory();
    memory[target.name]!.end = m.rssMiB;
    memory[target.name]!.peak = m.peakMiB;
  }
  return { samples, cold, memory };
}
