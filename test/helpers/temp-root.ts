/** Real temp directories for tests, removed afterwards. */
import { mkdtempSync, rmSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { afterEach } from "vitest";

const made: string[] = [];

/** A fresh empty directory under the OS temp dir; removed after the current test. */
export function tempDir(prefix = "kvkeep-test-"): string {
  const dir = mkdtempSync(path.join(os.tmpdir(), prefix));
  made.push(dir);
  return dir;
}

afterEach(async () => {
  // A store a test left open may still flush its index log in the background. rmSync
  // retries only its last rmdir, not the walk, and no JS runs during it: so remove whole
  // trees again, yielding in between so pending work can finish.
  for (const dir of made.splice(0)) {
    for (let attempt = 0; ; attempt++) {
      try {
        rmSync(dir, { recursive: true, force: true });
        break;
      } catch (error) {
        if ((error as NodeJS.ErrnoException).code !== "ENOTEMPTY" || attempt >= 20) throw error;
        await new Promise((r) => setTimeout(r, 10));
      }
    }
  }
});
