/**
 * Observations of third-party behaviour that depends on the machine: engine numerics (does a
 * wrong state give another reply on this CPU?), timing. The facts suite prints them and
 * records them — it never asserts them, because they are not kvkeep's behaviour and differ
 * between CPUs. kvkeep's guards against each are tests in `npm test` (test/fixtures/ENGINE-FACTS.md
 * lists which). Recorded as JSON lines in `$KVKEEP_FACTS_OUT`, else `.cache/facts/observations.jsonl`.
 */
import { appendFileSync, mkdirSync } from "node:fs";
import { cpus, hostname } from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";

const repoRoot = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../..");
const out = process.env.KVKEEP_FACTS_OUT ?? path.join(repoRoot, ".cache", "facts", "observations.jsonl");
const cpu = cpus()[0]?.model ?? "unknown CPU";

/** Print and record one observation, e.g. `observe("gemma3 cut back by 8: reply equals cold", false)`. */
export function observe(fact: string, value: unknown): void {
  console.log(`[fact] ${fact}: ${JSON.stringify(value)}  (${cpu})`);
  mkdirSync(path.dirname(out), { recursive: true });
  appendFileSync(out, `${JSON.stringify({ at: new Date().toISOString(), host: hostname(), cpu, fact, value })}\n`);
}
