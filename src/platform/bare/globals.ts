/**
 * What kvkeep's code reads as globals and Bare does not define (`process`, `TextEncoder`,
 * `AbortController`, `performance`). The Bare build injects these exports where the code names the globals
 * (esbuild `inject`): nothing is patched onto the global object, so an app's own globals are
 * left alone. Imports only bare-* packages and import-free modules, so these exist before
 * any kvkeep module that uses them is evaluated.
 */
import { AbortController as BareAbortController } from "bare-abort-controller";
import { TextEncoder as BareTextEncoder } from "bare-encoding";
import env from "bare-env";
import { bareGlobal, osBare } from "./runtime.js";

export { performance } from "./clock.js";

export const AbortController = BareAbortController;
export const TextEncoder = BareTextEncoder;

/** The `process` members kvkeep uses: env, pid, platform, arch, kill (liveness checks), cwd. */
export const process = {
  env: env as Record<string, string | undefined>,
  get pid(): number {
    return bareGlobal().pid;
  },
  get platform(): string {
    return bareGlobal().platform;
  },
  get arch(): string {
    return bareGlobal().arch;
  },
  /** Like Node's: throws with `code` ESRCH (no such process) or EPERM (exists, not ours). */
  kill(pid: number, signal: number | string = "SIGTERM"): true {
    osBare.kill(pid, signal);
    return true;
  },
  cwd(): string {
    return osBare.cwd();
  },
};
