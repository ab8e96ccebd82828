/**
 * What makes a directory a kvkeep cache root, and claiming one (ARCHITECTURE.md, "A root
 * knows it is one").
 *
 * `--root ~` or `KVKEEP_DIR=$HOME` by mistake must not let recovery, `verify --fix`, `gc` or
 * `rm --all` loose on a home directory. So a root says it is one: `<root>/.kvkeep/root.json`,
 * written when kvkeep makes the root (its directory missing or empty at open). Proof is the
 * marker's presence as a regular file in a plain `.kvkeep` directory; its contents
 * (`{"kvkeep":"cache-root","format":1,…}`) are for people, so a marker a crash left empty
 * still marks. Roots made by kvkeep before the marker existed have a `.kvkeep/` holding
 * `index.log` or `deletes.log` — logs only kvkeep writes — and are marked when a store
 * next opens them.
 *
 * Anything else that is not empty is foreign: a store refuses to open it and the CLI's
 * mutating commands refuse it (ROOT_NOT_KVKEEP), touching nothing, unless told to adopt it.
 *
 * Synchronous on purpose: a store is opened by a synchronous call, and refusing must
 * happen before that call returns a store that could start working on the directory.
 */
import { closeSync, constants as fsConstants, lstatSync, mkdirSync, openSync, readdirSync, renameSync, statSync, unlinkSync, writeSync } from "node:fs";
import path from "node:path";
import { errnoCode, KvKeepError } from "../errors.js";
import { INTERNAL_DIR_NAME } from "../keys/safe-key.js";
import { internalDir } from "../layout/paths.js";
import { PRIVATE_DIR_MODE } from "./files.js";
import { ownTempPath } from "./temp-owner.js";

export const ROOT_MARKER_NAME = "root.json";
export const ROOT_MARKER_FORMAT = 1;
/** Files only kvkeep writes in `.kvkeep/`: a root made before the marker existed has one of them. */
const LEGACY_PROOF = ["index.log", "deletes.log"] as const;
/** How many foreign entries an error names. */
const SAMPLE = 3;

/**
 * - `missing`: nothing at the path (a store creates it, marked);
 * - `not-directory`: a file (or a link to one) is there;
 * - `empty`: a directory with nothing but (maybe) a `.kvkeep` directory;
 * - `marked`: `.kvkeep/root.json` is there;
 * - `legacy`: no marker, but `.kvkeep/` holds a log only kvkeep writes;
 * - `foreign`: anything else — `sample` names a few of its entries.
 */
export type RootKind =
  | { kind: "missing" }
  | { kind: "not-directory" }
  | { kind: "empty" }
  | { kind: "marked" }
  | { kind: "legacy" }
  | { kind: "foreign"; sample: string[] };

export function markerPath(root: string): string {
  return path.join(internalDir(root), ROOT_MARKER_NAME);
}

function lstatOrNull(filePath: string): { isFile(): boolean; isDirectory(): boolean } | null {
  try {
    return lstatSync(filePath) ?? null;
  } catch (error) {
    if (errnoCode(error) === "ENOENT" || errnoCode(error) === "ENOTDIR") return null;
    throw error;
  }
}

/** What `root` is (see RootKind). Reads only. */
export function inspectRoot(root: string): RootKind {
  let st;
  try {
    // The root itself is the caller's choice, links and all.
    st = statSync(root);
  } catch (error) {
    if (errnoCode(error) === "ENOENT") return { kind: "missing" };
    throw error;
  }
  if (!st.isDirectory()) return { kind: "not-directory" };
  const internal = internalDir(root);
  // List the directory BEFORE looking for the marker. A marker is never removed, and a store
  // writes it before anything else in the root; so whatever the listing holds, a marker
  // written before it is seen below. Looked for first, another process could write the
  // marker and its first cache between the two looks, and a fresh root being filled by
  // other processes was refused as foreign (seen under load: 4 processes opening one root).
  const others = readdirSync(root).filter((name) => name !== INTERNAL_DIR_NAME);
  // A `.kvkeep` that is not a plain directory (a planted symlink) proves nothing and holds no marker.
  if (lstatOrNull(internal)?.isDirectory()) {
    if (lstatOrNull(markerPath(root))?.isFile()) return { kind: "marked" };
    if (LEGACY_PROOF.some((name) => lstatOrNull(path.join(internal, name))?.isFile())) return { kind: "legacy" };
  }
  if (others.length === 0) return { kind: "empty" };
  return { kind: "foreign", sample: others.sort().slice(0, SAMPLE) };
}

/** The error for a foreign directory; `how` says how to adopt it in the caller's terms. */
export function notARootError(root: string, kind: { sample: string[] }, how: string): KvKeepError {
  return new KvKeepError(
    "ROOT_NOT_KVKEEP",
    `${root} is not a kvkeep cache root: it is not empty (${kind.sample.map((n) => JSON.stringify(n)).join(", ")}${kind.sample.length >= SAMPLE ? ", …" : ""}) and has no ${path.join(INTERNAL_DIR_NAME, ROOT_MARKER_NAME)}; nothing was changed. Point kvkeep at its cache directory (--root DIR, KVKEEP_DIR), or, if this directory really holds kvkeep caches (copied or restored without ${INTERNAL_DIR_NAME}/), ${how}.`,
  );
}

/**
 * Write `<root>/.kvkeep/root.json` (creating the root and `.kvkeep` when missing): a temp
 * file then a rename, so a reader never sees a partial marker. The directory is never made
 * through a symlink. Throws the fs error on failure.
 */
export function writeRootMarker(root: string): void {
  // Private, as every directory kvkeep makes (files.ts, PRIVATE_DIR_MODE): caches hold conversations.
  mkdirSync(root, { recursive: true, mode: PRIVATE_DIR_MODE });
  const internal = internalDir(root);
  try {
    mkdirSync(internal, { mode: PRIVATE_DIR_MODE });
  } catch (error) {
    if (errnoCode(error) !== "EEXIST") throw error;
  }
  if (!lstatSync(internal).isDirectory()) {
    throw new KvKeepError("UNSAFE_PATH", `${internal} is not a plain directory; kvkeep does not write through it.`);
  }
  const target = markerPath(root);
  const temp = ownTempPath(target);
  const text = `${JSON.stringify({ kvkeep: "cache-root", format: ROOT_MARKER_FORMAT, createdAt: new Date().toISOString() })}\n`;
  const fd = openSync(temp, fsConstants.O_WRONLY | fsConstants.O_CREAT | fsConstants.O_EXCL | (fsConstants.O_NOFOLLOW ?? 0), 0o644);
  try {
    writeSync(fd, text);
  } finally {
    closeSync(fd);
  }
  try {
    renameSync(temp, target);
  } catch (error) {
    try {
      unlinkSync(temp);
    } catch {
      // left for recovery: a dead writer's temp in .kvkeep is harmless
    }
    throw error;
  }
}

/**
 * Make sure `root` may be used as a cache root, before a store touches it: a missing or
 * empty directory, and one made by an earlier kvkeep, are marked; a marked one is used as
 * it is; a foreign one is refused (ROOT_NOT_KVKEEP) unless `adopt`, which marks it. A
 * marker that cannot be written (a read-only file system) is reported through `onWriteFailed`
 * and not fatal: such a root is empty, already kvkeep's or adopted (a `.kvkeep` planted as
 * a symlink is never written through: the store then works without its shared logs, as
 * it always did).
 */
export function claimRoot(
  root: string,
  options: { adopt: boolean; how: string; onWriteFailed: (error: unknown) => void },
): RootKind {
  const kind = inspectRoot(root);
  if (kind.kind === "marked") return kind;
  if (kind.kind === "not-directory") {
    throw new KvKeepError("UNSAFE_PATH", `the cache root ${root} is not a directory; pass the cache directory as the root.`);
  }
  if (kind.kind === "foreign" && !options.adopt) throw notARootError(root, kind, options.how);
  try {
    writeRootMarker(root);
  } catch (error) {
    options.onWriteFailed(error);
  }
  return kind;
}

/**
 * Make a marker just written durable (its file, `.kvkeep/`, the root): without it, a power
 * cut soon after a root was made could leave its caches behind a lost marker, and the next
 * open would refuse the root as foreign. Best effort: a failure is only logged by the caller.
 */
export async function syncRootMarker(fsBackend: { fsyncFile(path: string): Promise<void>; fsyncDir(path: string): Promise<void> }, root: string): Promise<void> {
  await fsBackend.fsyncFile(markerPath(root));
  await fsBackend.fsyncDir(internalDir(root));
  await fsBackend.fsyncDir(root);
  await fsBackend.fsyncDir(path.dirname(path.resolve(root)));
}
