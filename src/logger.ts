import { KvKeepError } from "./errors.js";

/**
 * The logger kvkeep writes through: any object with these four methods.
 * kvkeep always calls them with one preformatted string (`kvkeep: <what> key=value ...`),
 * which is what both `console` and pino print readably (pino treats extra arguments
 * as printf interpolation, so structured objects are folded into the message instead).
 */
export interface Logger {
  debug(message: string): void;
  info(message: string): void;
  warn(message: string): void;
  error(message: string): void;
}

const noop = (): void => {};

const LOGGER_METHODS = ["debug", "info", "warn", "error"] as const;

/** A logger option must have the four methods; anything else would fail later with a raw TypeError. */
export function assertLogger(value: unknown, argument = "logger"): asserts value is Logger {
  const missing =
    value === null || typeof value !== "object"
      ? LOGGER_METHODS
      : LOGGER_METHODS.filter((m) => typeof (value as Record<string, unknown>)[m] !== "function");
  if (missing.length > 0) {
    throw new KvKeepError(
      "INVALID_ARGUMENT",
      `${argument} must be an object with debug, info, warn and error methods (e.g. console or a pino logger); ${value === null || typeof value !== "object" ? `got ${value === null ? "null" : typeof value}` : `it lacks ${missing.join(", ")}`}.`,
      { argument },
    );
  }
}

/** The default: kvkeep is silent unless given a logger. */
export const silentLogger: Logger = Object.freeze({ debug: noop, info: noop, warn: noop, error: noop });

/** `kvkeep: message a=1 b="two words"` — one line, stable, greppable. */
export function logLine(message: string, fields?: Record<string, unknown>): string {
  let line = `kvkeep: ${message}`;
  if (fields) {
    for (const [key, value] of Object.entries(fields)) {
      if (value === undefined) continue;
      const text = value instanceof Error ? value.message : typeof value === "string" ? value : JSON.stringify(value);
      line += ` ${key}=${/[\s"=]/.test(text) ? JSON.stringify(text) : text}`;
    }
  }
  return line;
}
