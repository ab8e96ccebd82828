/**
 * The cache root a command works on: it must exist and be a directory; is it writable; is
 * it a kvkeep root (src/durable/root-marker.ts)?
 */
import { constants as fsConstants, promises as fs } from "node:fs";
import { inspectRoot, notARootError, type RootKind, writeRootMarker } from "../store/inspect.js";
import { errnoCode } from "../errors.js";
import type { CommandContext } from "./command.js";
import { CliError } from "./errors.js";

export interface RootState {
  /** What the directory is: `marked`, `legacy` (made by an earlier kvkeep), `empty` or `foreign`. */
  kind: RootKind;
  /** On a read-only file system (or not writable by this user): nothing can be removed. */
  readOnly: boolean;
  /** Why, for messages: `EROFS`, `EACCES`. */
  readOnlyReason: string | null;
}

/** ROOT_MISSING or ROOT_NOT_DIRECTORY (exit 1) unless `root` is a directory. Changes nothing. */
export async function checkRoot(root: string): Promise<RootState> {
  let st;
  try {
    st = await fs.stat(root);
  } catch (error) {
    if (errnoCode(error) === "ENOENT") {
      throw new CliError("ROOT_MISSING", `no cache root at ${root}; pass --root DIR or set KVKEEP_DIR (nothing was changed).`);
    }
    throw error;
  }
  if (!st.isDirectory()) {
    throw new CliError("ROOT_NOT_DIRECTORY", `the cache root ${root} is not a directory; pass --root DIR with the cache directory.`);
  }
  const kind = inspectRoot(root);
  try {
    await fs.access(root, fsConstants.W_OK);
    return { kind, readOnly: false, readOnlyReason: null };
  } catch (error) {
    return { kind, readOnly: true, readOnlyReason: errnoCode(error) ?? "not writable" };
  }
}

/** The `--adopt` option of the commands that change a root. */
export const ADOPT_OPTION = {
  adopt: {
    type: "boolean",
    help: "work on a directory that is not marked as a kvkeep root (no .kvkeep/root.json) and mark it; still only kvkeep's own files are removed",
  },
} as const;

/**
 * ROOT_NOT_KVKEEP (exit 1) for a command that changes the root — and for its dry run, which
 * says what it would do — when the directory is not a kvkeep root, unless `--adopt`.
 * Nothing is touched either way: the marker is written by the store the command opens.
 */
export function assertKvkeepRoot(ctx: CommandContext, state: RootState): void {
  if (state.kind.kind !== "foreign" || ctx.options.adopt === true) return;
  throw notARootError(ctx.root, state.kind, "pass --adopt to treat it as one");
}

/** Mark an adopted root for a command that changes it without opening a store (`verify --fix`). */
export function markAdopted(ctx: CommandContext, state: RootState): void {
  if (state.kind.kind === "foreign" && ctx.options.adopt === true && !state.readOnly) writeRootMarker(ctx.root);
}

/** For a command that only reads: say (not with --json) that the directory is not marked as a kvkeep root. */
export function noteIfNotRoot(ctx: CommandContext, state: RootState): void {
  if (state.kind.kind !== "foreign") return;
  ctx.note(`kvkeep: note: ${ctx.root} is not marked as a kvkeep cache root (no .kvkeep/root.json); gc, rm and verify --fix refuse it without --adopt`);
}

/** ROOT_READ_ONLY (exit 1) for a command that must remove files. */
export function assertWritable(root: string, state: RootState, what: string): void {
  if (state.readOnly) {
    throw new CliError(
      "ROOT_READ_ONLY",
      `cannot ${what}: the cache root ${root} is read-only (${state.readOnlyReason}); nothing was removed.`,
    );
  }
}

/**
 * For commands that only read (usage, scan, verify without --fix): null when the root does
 * not exist yet — a fresh machine, where nothing has been cached, which is 0 caches rather
 * than an error (the root is made by the first turn that caches). Otherwise as checkRoot.
 */
export async function checkRootToRead(root: string): Promise<RootState | null> {
  try {
    return await checkRoot(root);
  } catch (error) {
    if (error instanceof CliError && error.code === "ROOT_MISSING") return null;
    throw error;
  }
}

/** The note a read-only command prints (stderr, not with --json) for a root that does not exist yet. */
export function noRootYet(root: string): string {
  return `kvkeep: no cache root at ${root} yet: nothing is cached there (the first turn that caches creates it; --root DIR or KVKEEP_DIR for another).`;
}
