/**
 * Read-only file systems for tests, for real: a small tmpfs remounted read-only, or a
 * read-only bind mount of one directory. Needs root or CAP_SYS_ADMIN; `mountTmpfs` says
 * why not otherwise, and the tests that need it skip with that reason printed.
 */
import { execFileSync } from "node:child_process";
import { mkdtempSync, rmdirSync } from "node:fs";
import os from "node:os";
import path from "node:path";

const run = (args: string[]): void => {
  execFileSync(args[0]!, args.slice(1), { stdio: "pipe" });
};

export interface Tmpfs {
  readonly dir: string;
  /** Remount read-only (true) or read-write (false). */
  setReadOnly(readOnly: boolean): void;
  /** Make `sub` (a directory inside) a read-only bind mount of itself. */
  bindReadOnly(sub: string): void;
  unmount(): void;
}

/** A fresh 16 MiB tmpfs, or the reason it cannot be mounted here. */
export function mountTmpfs(): Tmpfs | { skip: string } {
  const dir = mkdtempSync(path.join(os.tmpdir(), "kvkeep-rofs-"));
  try {
    run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", dir]);
  } catch (error) {
    rmdirSync(dir);
    return { skip: `cannot mount a tmpfs here (${String((error as { stderr?: Buffer }).stderr ?? error).trim()}); this test needs root or CAP_SYS_ADMIN` };
  }
  const binds: string[] = [];
  const umount = (target: string): void => {
    try {
      run(["umount", target]);
    } catch {
      run(["umount", "-l", target]); // something still open: detach lazily
    }
  };
  return {
    dir,
    setReadOnly: (readOnly) => run(["mount", "-o", `remount,${readOnly ? "ro" : "rw"}`, dir]),
    bindReadOnly: (sub) => {
      run(["mount", "--bind", sub, sub]);
      binds.push(sub);
      run(["mount", "-o", "remount,bind,ro", sub]);
    },
    unmount: () => {
      for (const sub of binds.splice(0).reverse()) umount(sub);
      umount(dir);
      rmdirSync(dir);
    },
  };
}
