import { loadNativeFs } from "../../native/index.js";
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
    const nfs = loadNativeFs();
    ctx.print({ kind: nfs.kind, crossProcessLocks: nfs.crossProcessLocks, binaryPath: nfs.binaryPath }, () =>
      `${nfs.kind}${nfs.binaryPath ? ` (${nfs.binaryPath})` : ""}; cross-process locks: ${nfs.crossProcessLocks ? "yes" : "no"}`,
    );
    return 0;
  },
};
