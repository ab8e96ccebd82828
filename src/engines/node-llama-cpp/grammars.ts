/**
 * The grammars a constrained reply is generated with, made by node-llama-cpp and kept per
 * `Llama` (a handful of schemas recur: an agent's tools, an app's response format).
 *
 * node-llama-cpp's JSON-schema grammars end in four newlines (its `LlamaChat` stops on them);
 * kvkeep generates token by token and ends a grammar's text when the grammar is complete (the
 * sampler then allows only the end-of-generation token), so the newlines are cut off the root
 * rule: the text is exactly the JSON, and what the sequence holds renders back to the same tokens.
 */
import type { Llama, LlamaGrammar, LlamaJsonSchemaGrammar } from "node-llama-cpp";
import { KvKeepError } from "../../errors.js";
import type { GrammarSchema } from "./json-schema.js";

/** A grammar and how to read what it produced. */
export interface JsonGrammar {
  grammar: LlamaGrammar;
  /** Parse and check generated text against the schema; throws when it does not fit. */
  parse(text: string): unknown;
  /** Text node-llama-cpp's grammar ends with that could not be cut from it (then trimmed off the reply); "" normally. */
  terminator: string;
}

const TERMINATOR = "\n\n\n\n";
/** The root rule's ending node-llama-cpp adds: `"\n\n\n\n" [\n]*`. */
const ROOT_TERMINATOR = / "\\n\\n\\n\\n" \[\\n\]\*$/m;
const MAX_CACHED = 64;
/**
 * node-llama-cpp's numbers take exponents of up to 16 digits: `1e999` is valid JSON text that
 * parses to Infinity (and fails an integer schema). Integers get no exponent, other numbers
 * one of at most 2 digits (still finite).
 */
const EXPONENT = ' ([eE] [-+]? ("0" | [1-9] [0-9]{0,15}))?';
const SHORT_EXPONENT = " ([eE] [-+]? [0-9]{1,2})?";

/** The grammar text with finite numbers (see EXPONENT). */
function finiteNumbers(grammar: string): string {
  return grammar
    .split("\n")
    .map((line) => (line.startsWith("integer-number-rule ::=") ? line.replaceAll(EXPONENT, "") : line.replaceAll(EXPONENT, SHORT_EXPONENT)))
    .join("\n");
}

const cache = new WeakMap<Llama, Map<string, Promise<JsonGrammar | LlamaGrammar>>>();

function cached<T extends JsonGrammar | LlamaGrammar>(llama: Llama, key: string, make: () => Promise<T>): Promise<T> {
  let byKey = cache.get(llama);
  if (!byKey) cache.set(llama, (byKey = new Map()));
  let hit = byKey.get(key);
  if (hit) {
    byKey.delete(key); // most recent last
    byKey.set(key, hit);
    return hit as Promise<T>;
  }
  hit = make();
  hit.catch(() => byKey.delete(key));
  byKey.set(key, hit);
  if (byKey.size > MAX_CACHED) byKey.delete(byKey.keys().next().value!);
  return hit as Promise<T>;
}

/** A grammar for JSON valid for `schema` (already in node-llama-cpp's subset, see json-schema.ts). */
export function jsonGrammar(llama: Llama, schema: GrammarSchema): Promise<JsonGrammar> {
  return cached(llama, `json:${JSON.stringify(schema)}`, async () => {
    let checker: LlamaJsonSchemaGrammar<never>;
    try {
      checker = await llama.createGrammarForJsonSchema(schema as never);
    } catch (error) {
      throw new KvKeepError("INVALID_ARGUMENT", `node-llama-cpp could not make a grammar for the schema: ${(error as Error).message}`, { argument: "schema" });
    }
    const text = checker.grammar;
    const stripped = text.replace(ROOT_TERMINATOR, "");
    const rewritten = finiteNumbers(stripped);
    const grammar = rewritten === text ? checker : await llama.createGrammar({ grammar: rewritten });
    return {
      grammar,
      parse: (json: string) => checker.parse(json),
      terminator: stripped === text ? TERMINATOR : "",
    };
  });
}

/** A grammar for exactly one of `names` (tool names: letters, digits, `_` and `-`). */
export function nameGrammar(llama: Llama, names: readonly string[]): Promise<LlamaGrammar> {
  const sorted = [...new Set(names)].sort();
  return cached(llama, `names:${JSON.stringify(sorted)}`, () =>
    llama.createGrammar({ grammar: `root ::= ${sorted.map((n) => JSON.stringify(n)).join(" | ")}` }),
  );
}
