/**
 * Who wrote a temp file, and whether that writer is still alive — in a way that survives
 * pid reuse. A pid alone does not: after a reboot (or a long uptime) the pid in a crashed
 * writer's temp name belongs to some unrelated live process, and the temp would be kept
 * forever. So each temp name carries a stamp of its writer's incarnation: a hash of the
 * boot id and the process's start time (Linux: /proc/sys/kernel/random/boot_id and field 22
 * of /proc/<pid>/stat). A writer is alive only if a process with that pid exists *and* has
 * the same stamp now.
 *
 * Where /proc is not available (macOS, Windows) the stamp is absent and liveness falls back
 * to the pid alone, as do temps named before stamps existed.
 */
import { createHash } from "node:crypto";
import { readFileSync } from "node:fs";
import { tempOwner, tempPathFor } from "../layout/paths.js";

function readText(file: string): string | null {
  try {
    return readFileSync(file, "utf8");
  } catch {
    return null;
  }
}

let bootId: string | null | undefined;

function currentBootId(): string | null {
  bootId ??= readText("/proc/sys/kernel/random/boot_id")?.trim() || null;
  return bootId;
}

/** Field 22 of /proc/<pid>/stat (start time in clock ticks since boot); null if unreadable. */
function startTimeOf(pid: number): string | null {
  const stat = readText(`/proc/${pid}/stat`);
  if (stat === null) return null;
  // The command name (field 2) is in parentheses and may contain spaces or ")": fields
  // after the last ")" are the fixed ones, starting with field 3.
  const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  return fields[22 - 3] ?? null;
}

/** The stamp of process `pid` as it is now, or null when it cannot be known (no /proc, no such process). */
export function writerStampOf(pid: number): string | null {
  const boot = currentBootId();
  const start = boot === null ? null : startTimeOf(pid);
  if (boot === null || start === null) return null;
  return createHash("sha256").update(`${boot}:${start}`).digest("hex").slice(0, 10);
}

let ownStamp: string | null | undefined;

/** This process's stamp (computed once). */
export function ownWriterStamp(): string | null {
  if (ownStamp === undefined) ownStamp = writerStampOf(process.pid);
  return ownStamp;
}

/** A temp path beside `target` named for this process: its pid and stamp. */
export function ownTempPath(target: string): string {
  return tempPathFor(target, process.pid, ownWriterStamp() ?? undefined);
}

function pidExists(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (error) {
    // EPERM: it exists but belongs to someone else.
    return (error as NodeJS.ErrnoException).code === "EPERM";
  }
}

/**
 * Whether the writer of the temp file named `fileName` may still be writing it. True for a
 * name that is not a kvkeep temp (never removed as someone's leftover).
 */
export function tempWriterAlive(fileName: string): boolean {
  const owner = tempOwner(fileName);
  if (!owner) return true;
  if (owner.pid === process.pid) {
    const own = ownWriterStamp();
    return owner.stamp === null || own === null || owner.stamp === own;
  }
  if (!pidExists(owner.pid)) return false;
  if (owner.stamp === null) return true; // no stamp to compare: the pid is all there is
  const now = writerStampOf(owner.pid);
  // Not knowable here (no /proc, or the process went between the two looks): keep it.
  return now === null || now === owner.stamp;
}

/** The stamp kvkeep puts in temp names: 10 hex digits of a hash (writerStampOf). */
const STAMP = /^[0-9a-f]{10}$/;

/**
 * Whether `fileName` is a name kvkeep gives its temps. Where this process stamps its temps
 * (Linux: /proc), every kvkeep writer does, so a name without a well-formed stamp —
 * `report.bin.1234-abc.tmp` — is not one of kvkeep's; where stamps cannot be made, the
 * pattern alone.
 */
export function ownTempName(fileName: string): boolean {
  const owner = tempOwner(fileName);
  if (!owner) return false;
  return owner.stamp === null ? ownWriterStamp() === null : STAMP.test(owner.stamp);
}

/** Whether the temp file named `fileName` is a leftover kvkeep may remove: its own name, its writer dead. */
export function deadWritersTemp(fileName: string): boolean {
  return ownTempName(fileName) && !tempWriterAlive(fileName);
}
