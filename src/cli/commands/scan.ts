import { DEFAULT_MAX_BYTES } from "../../retention/plan.js";
import { sizeOption } from "../args.js";
import { readRoot, totals } from "../caches.js";
import type { ParsedCommand } from "../command.js";
import { budgetBar, formatAge, formatBytes, plural, renderTable } from "../format.js";
import { checkRoot } from "../root.js";

export const scanCommand: ParsedCommand = {
  name: "scan",
  summary: "every cache: key, model, size, messages, last use (changes nothing)",
  usage: "kvkeep scan [--max-bytes SIZE] [--root DIR] [--json]",
  description:
    "Lists every cache under the root with its size, the messages its committed state covers and when it was last used, and flags a cache a turn would not trust (no manifest, unreadable manifest). On a terminal a bar above the table shows the disk used by auto caches (evictable) and named ones against the retention budget. It only reads.",
  options: {
    "max-bytes": { type: "string", value: "SIZE", help: "the budget the bar is drawn against (default 4G, the store's default maxBytes)" },
  },
  positionals: { name: "", min: 0, max: 0 },
  examples: [
    ["kvkeep scan", "the table, with the budget bar on a terminal"],
    ["kvkeep scan --max-bytes 512M", "against your app's budget"],
    ["kvkeep scan --json | jq '.[] | select(.problem)'", "caches with a problem"],
  ],
  async run(ctx) {
    const budget = sizeOption(ctx.options, "max-bytes") ?? DEFAULT_MAX_BYTES;
    await checkRoot(ctx.root);
    const { caches } = await readRoot(ctx.root);
    const now = Date.now();
    ctx.print(
      caches.map((c) => ({ ...c, lastUsed: new Date(c.lastUsedMs).toISOString() })),
      () => {
        if (caches.length === 0) return `${ctx.root}: no caches`;
        const sum = totals(caches);
        const anyProblem = caches.some((c) => c.problem);
        const table = renderTable(
          [
            { header: "KEY" },
            { header: "MODEL" },
            { header: "CONFIG" },
            { header: "SIZE", align: "right" },
            { header: "MESSAGES", align: "right" },
            { header: "LAST USE" },
            ...(anyProblem ? [{ header: "PROBLEM" }] : []),
          ],
          caches.map((c) => [
            c.cacheKey,
            c.modelId,
            c.configHash,
            formatBytes(c.bytes),
            c.messageCount === null ? "?" : String(c.messageCount),
            formatAge(now - c.lastUsedMs),
            ...(anyProblem ? [c.problem ?? ""] : []),
          ]),
        );
        const bar = ctx.io.stdout.isTTY ? [...budgetBar(sum, budget), ""] : [];
        return [...bar, ...table, "", `${plural(sum.count, "cache")}, ${formatBytes(sum.bytes)} in ${ctx.root}`];
      },
    );
    return 0;
  },
};
