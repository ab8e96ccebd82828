/**
 * The grammar of every `kvkeep` command's values (pure): sizes (`512K`, `5M`, `2G`),
 * durations (`30s`, `15m`, `1h`, `7d`) and whole numbers. option-values.ts applies it to flags.
 */

const SIZE_UNITS: Record<string, number> = { "": 1, b: 1, k: 1024, m: 1024 ** 2, g: 1024 ** 3, t: 1024 ** 4 };

/**
 * Bytes from `1048576`, `512K`, `5M`, `2G`, `1.5T` (powers of 1024; `KB`, `KiB`, `MB`, …
 * mean the same). Undefined when the text is not a size.
 */
export function parseSize(text: string): number | undefined {
  const match = /^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(?:i?b)?\s*$/i.exec(text);
  if (!match) return undefined;
  const bytes = Math.floor(Number(match[1]) * SIZE_UNITS[match[2]!.toLowerCase()]!);
  return Number.isSafeInteger(bytes) ? bytes : undefined;
}

const DURATION_UNITS: Record<string, number> = { ms: 1, s: 1000, m: 60_000, min: 60_000, h: 3_600_000, d: 86_400_000, w: 604_800_000 };

/**
 * Milliseconds from `30s`, `15m`, `1h`, `7d`, `2w`, `500ms` or a sum like `1h30m`; `0` alone
 * needs no unit. A bare number is refused (undefined): seconds or milliseconds would be a guess.
 */
export function parseDuration(text: string): number | undefined {
  const trimmed = text.trim().toLowerCase();
  if (/^0+$/.test(trimmed)) return 0;
  if (!/^(\d+(?:\.\d+)?(ms|min|s|m|h|d|w))+$/.test(trimmed)) return undefined;
  let total = 0;
  for (const [, value, unit] of trimmed.matchAll(/(\d+(?:\.\d+)?)(ms|min|s|m|h|d|w)/g)) {
    total += Number(value) * DURATION_UNITS[unit!]!;
  }
  return Number.isSafeInteger(Math.round(total)) ? Math.round(total) : undefined;
}

/**
 * A whole number written with digits only (`8080`, `007`): no sign, fraction, exponent or
 * unit. Undefined otherwise. Not bounded here: the caller checks its range.
 */
export function parseWholeNumber(text: string): number | undefined {
  const trimmed = text.trim();
  return /^\d+$/.test(trimmed) ? Number(trimmed) : undefined;
}

/** The grammar in one line each, for help texts. */
export const SIZE_SYNTAX = "Sizes: 512K, 5M, 2G, 1.5T (powers of 1024; KB, KiB, MB, … mean the same) or bytes.";
export const DURATION_SYNTAX = "Durations: 30s, 15m, 1h, 7d, 2w, 500ms, or a sum such as 1h30m.";
