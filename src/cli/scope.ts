/**
 * `--scope` and `--scope-id`: which isolation scope a command looks at. A scope is the
 * application's own string (a user id, a tenant; for `kvkeep serve`, the SHA-256 of an API
 * key); kvkeep stores only its id, a hash, which `scan` shows. Either names one scope.
 */
import { SCOPE_ID_PATTERN, scopeIdOf, scopeIdOption } from "../keys/scope.js";
import type { OptionSpec, OptionValues } from "./command.js";
import { usageError } from "./errors.js";

export const SCOPE_OPTIONS: Readonly<Record<string, OptionSpec>> = {
  scope: {
    type: "string",
    value: "SCOPE",
    help: "only this scope's caches, named as the app named it (kvkeep serve: the SHA-256 hex of the API key)",
  },
  "scope-id": { type: "string", value: "ID", help: "only the caches of the scope with this id (the SCOPE column of kvkeep scan)" },
};

/** The scope id the options name; undefined when neither option is given (no filter). */
export function scopeIdFromOptions(options: OptionValues): string | undefined {
  const scope = options.scope;
  const id = options["scope-id"];
  if (scope !== undefined && id !== undefined) throw usageError("give --scope or --scope-id, not both.");
  if (typeof id === "string") {
    if (!SCOPE_ID_PATTERN.test(id)) throw usageError(`--scope-id must be a scope id: 32 hex characters as kvkeep scan shows it (got ${JSON.stringify(id)}).`);
    return id;
  }
  if (typeof scope === "string") {
    try {
      return scopeIdOption(scope, "--scope") ?? scopeIdOf(scope);
    } catch (error) {
      throw usageError((error as Error).message);
    }
  }
  return undefined;
}

/** How a table shows a cache's scope: its id, or "-" for the shared space. */
export function shownScope(scopeId: string | null | undefined): string {
  return scopeId ?? "-";
}
