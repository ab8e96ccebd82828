/**
 * The typed values of parsed flags (args.ts parses them): sizes, durations, bounded whole
 * numbers, non-empty text and repeated flags, each in the grammar of units.ts, each refusing a
 * bad value with a USAGE error that names the flag and shows the form it wants. Pure.
 */
import type { OptionValues } from "./command.js";
import { usageError } from "./errors.js";
import { parseDuration, parseSize, parseWholeNumber } from "./units.js";

/** A flag's text, or undefined when it was not given (the last one when given twice). */
function textOf(values: OptionValues, name: string): string | undefined {
  const value = values[name];
  if (Array.isArray(value)) return value.at(-1);
  return typeof value === "string" ? value : undefined;
}

/** A `--max-bytes`-style option: `5M`, `2G`, `512K` or bytes. */
export function sizeOption(values: OptionValues, name: string): number | undefined {
  const text = textOf(values, name);
  if (text === undefined) return undefined;
  const bytes = parseSize(text);
  if (bytes === undefined) throw usageError(`--${name} must be a size such as 512K, 5M, 2G or a number of bytes (got ${JSON.stringify(text)}).`);
  return bytes;
}

/** A duration option: `30s`, `15m`, `1h`, `7d`. */
export function durationOption(values: OptionValues, name: string): number | undefined {
  const text = textOf(values, name);
  if (text === undefined) return undefined;
  const ms = parseDuration(text);
  if (ms === undefined) throw usageError(`--${name} must be a duration such as 30s, 15m, 1h or 7d (got ${JSON.stringify(text)}).`);
  return ms;
}

/** A whole-number option (`--port 8080`) in `[min, max]`. */
export function integerOption(values: OptionValues, name: string, range: { readonly min: number; readonly max: number }): number | undefined {
  const text = textOf(values, name);
  if (text === undefined) return undefined;
  const n = parseWholeNumber(text);
  if (n === undefined) throw usageError(`--${name} must be a whole number (got ${JSON.stringify(text)}).`);
  if (n < range.min || n > range.max) throw usageError(`--${name} must be between ${range.min} and ${range.max} (got ${n}).`);
  return n;
}

/** A text option the command cannot do without: `--model is required: <what>.` when missing or empty. */
export function requiredText(values: OptionValues, name: string, what: string): string {
  const text = textOf(values, name);
  if (text === undefined || text === "") throw usageError(`--${name} is required: ${what}.`);
  return text;
}

/** A text option that must not be empty (`--host ""` is a mistake, not a choice). */
export function textOption(values: OptionValues, name: string): string | undefined {
  const text = textOf(values, name);
  if (text === "") throw usageError(`--${name} must not be empty.`);
  return text;
}

/** Every value of a repeatable option (`--api-key A --api-key B`), in order; none may be empty. */
export function listOption(values: OptionValues, name: string): string[] {
  const value = values[name];
  const list = Array.isArray(value) ? value : typeof value === "string" ? [value] : [];
  if (list.some((item) => item === "")) throw usageError(`--${name} must not be empty.`);
  return list;
}
