/**
 * Where `kvkeep serve`'s time to ready goes: ready-probe.ts (the real startServer, its steps
 * timed) bundled as the CLI is and run in fresh processes with plain node, beside node's own
 * start and llama-server's time to ready, each a median of `repeats` runs.
 */
import { execFileSync } from "node:child_process";
import { bundleFixture } from "../../test/helpers/child.js";
import { median, nowMs } from "../lib.js";
import { startLlamaServer } from "./llama-server.js";
import type { ReadyAnatomy, ReadyProbeRequest } from "./ready-probe.js";

/** One server's row: milliseconds from the process's start to the end of each step ("" where it has none). */
export type ReadyParts = Record<string, string | number>;

export interface ReadyOptions {
  readonly modelPath: string;
  readonly threads: number;
  readonly contextSize: number;
  readonly builds: Array<ReadyProbeRequest["engineBuild"]>;
  readonly llamaServer: string | null;
  readonly repeats: number;
  readonly log: (text: string) => void;
}

export async function readyAnatomy(options: ReadyOptions): Promise<ReadyParts[]> {
  const probe = await bundleFixture("bench/peer/ready-probe.ts");
  const nodeStart: number[] = [];
  for (let i = 0; i < options.repeats; i++) {
    const started = nowMs();
    execFileSync(process.execPath, ["-e", ""]);
    nodeStart.push(nowMs() - started);
  }
  const rows: ReadyParts[] = [];
  for (const engineBuild of options.builds) {
    const runs: ReadyAnatomy[] = [];
    for (let i = 0; i < options.repeats; i++) {
      const request: ReadyProbeRequest = { modelPath: options.modelPath, threads: options.threads, contextSize: options.contextSize, engineBuild };
      const stdout = execFileSync(process.execPath, [probe, JSON.stringify(request)], { encoding: "utf8", stdio: ["ignore", "pipe", "ignore"] });
      runs.push(JSON.parse(stdout.trim().split("\n").at(-1)!) as ReadyAnatomy);
    }
    const m = (pick: (r: ReadyAnatomy) => number): number => Math.round(median(runs.map(pick)));
    rows.push({
      server: `kvkeep serve --engine-build ${engineBuild} (${runs[0]!.buildType})`,
      "node starts (empty script)": Math.round(median(nodeStart)),
      "modules loaded": m((r) => r.modulesLoaded),
      "engine started": m((r) => r.engineStarted),
      "model loaded": m((r) => r.modelLoaded),
      "chat wrapper, store (contexts step begins)": m((r) => r.contextsBegan),
      "ready (context, warm-up turn, listening)": m((r) => r.ready),
      "RSS MiB": m((r) => r.rssMiB),
    });
    options.log(`ready: ${engineBuild} done`);
  }
  if (options.llamaServer) {
    const ready: number[] = [];
    for (let i = 0; i < options.repeats; i++) {
      const started = nowMs();
      const server = await startLlamaServer(options.llamaServer, ["-m", options.modelPath, "-c", String(options.contextSize), "-t", String(options.threads), "-np", "1", "--jinja"]);
      ready.push(nowMs() - started);
      await server.kill();
    }
    rows.push({
      server: "llama-server (native)",
      "node starts (empty script)": "",
      "modules loaded": "",
      "engine started": "",
      "model loaded": "",
      "chat wrapper, store (contexts step begins)": "",
      "ready (context, warm-up turn, listening)": Math.round(median(ready)),
      "RSS MiB": "",
    });
  }
  return rows;
}
