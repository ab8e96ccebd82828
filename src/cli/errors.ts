/**
 * What the CLI fails with: a stable code, a one-line message that says what to do, and
 * the exit status (2 for bad usage — nothing was touched; 1 for everything else).
 */
import { isKvKeepError } from "../errors.js";

export type CliErrorCode =
  /** Unknown command or option, a bad value, a missing or extra argument. */
  | "USAGE"
  /** `rm --all` without `--yes` when stdin is not a terminal. */
  | "CONFIRMATION_REQUIRED"
  /** The user answered no to a confirmation prompt. */
  | "NOT_CONFIRMED"
  | "ROOT_MISSING"
  | "ROOT_NOT_DIRECTORY"
  /** The command must change the root, and it is on a read-only file system. */
  | "ROOT_READ_ONLY"
  /** `rm` of a key with no caches. */
  | "NOT_FOUND"
  /** `gc` could not evict caches it should have. */
  | "EVICTION_FAILED"
  /** `--remote`: Redis could not be reached, or did not answer within --remote-timeout. */
  | "REMOTE_UNAVAILABLE"
  /** `--remote` without the `redis` package (an optional peer dependency) installed. */
  | "REMOTE_CLIENT_MISSING"
  /** `serve` or `chat` without a package it needs (node-llama-cpp; for serve also fastify, prom-client: optional peer dependencies). */
  | "PACKAGE_MISSING"
  /** `serve` or `chat` could not start: the model could not be found, downloaded or loaded. */
  | "START_FAILED"
  /** `chat --session NAME` while another `kvkeep chat` has that session open. */
  | "SESSION_IN_USE"
  /** `chat --session NAME`: the session's transcript file is not one kvkeep can read. */
  | "TRANSCRIPT_UNREADABLE";

export const EXIT_OK = 0;
export const EXIT_FAILURE = 1;
export const EXIT_USAGE = 2;

export class CliError extends Error {
  override readonly name = "CliError";
  constructor(
    readonly code: CliErrorCode,
    message: string,
    readonly exitCode: number = code === "USAGE" || code === "CONFIRMATION_REQUIRED" ? EXIT_USAGE : EXIT_FAILURE,
  ) {
    super(message);
  }
}

/** The one usage error of every command: bad flags, values or arguments (exit 2, nothing was done). */
export function usageError(message: string): CliError {
  return new CliError("USAGE", message);
}

/** The code, message and exit status of anything a command threw. */
export function describeFailure(error: unknown): { code: string; message: string; exitCode: number } {
  if (error instanceof CliError) return { code: error.code, message: error.message, exitCode: error.exitCode };
  if (isKvKeepError(error)) {
    return { code: error.code, message: error.message, exitCode: error.code === "INVALID_ARGUMENT" || error.code.startsWith("KEY_") ? EXIT_USAGE : EXIT_FAILURE };
  }
  const errno = (error as { code?: unknown } | null)?.code;
  return {
    code: typeof errno === "string" ? errno : "INTERNAL",
    message: error instanceof Error ? error.message : String(error),
    exitCode: EXIT_FAILURE,
  };
}
