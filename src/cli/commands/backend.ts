import { nativeBackend } from "../../store/inspect.js";
import type { Command } from "../command.js";

export const backendCommand: Command = {
  name: "backend",
  summary: "which native backend kvkeep uses here (prebuilt, local build or JS fallback)",
  usage: "kvkeep backend [--json]",
  description:
    "Says which file-system backend kvkeep loads in this installation: the prebuilt addon shipped in the package, a local build, or the pure-JS fallback (which keeps every single-process guarantee but has no cross-process locks).",
  options: {},
  positionals: { name: "", min: 0, max: 0 },
  examples: [["kvkeep backend", "e.g. `prebuilt (…/prebuilds/linux-x64/kvkeep.node); cross-process locks: yes`"]],
  async run(ctx) {
    const backend = nativeBackend();
    ctx.print(backend, () =>
      `${backend.kind}${backend.binaryPath ? ` (${backend.binaryPath})` : ""}; cross-process locks: ${backend.crossProcessLocks ? "yes" : "no"}`,
    );
    return 0;
  },
};
