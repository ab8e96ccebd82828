import { readRoot, totals } from "../../store/inspect.js";
import type { Command } from "../command.js";
import { formatBytes, plural, renderTable } from "../format.js";
import { checkRootToRead, noRootYet, noteIfNotRoot } from "../root.js";

export const usageCommand: Command = {
  name: "usage",
  summary: "bytes and counts on disk, auto vs named (changes nothing)",
  usage: "kvkeep usage [--root DIR] [--json]",
  description:
    "Sums the cache files under the root: auto-mode caches (evictable by a sweep) and named ones (your custom keys), the token chunks chunked caches share (each counted once: the bytes are physical; logical bytes count every cache with its own copy, and sharing is logical / physical), and the temp files of writers. It only reads: no store is opened, nothing is removed.",
  options: {},
  positionals: { name: "", min: 0, max: 0 },
  examples: [
    ["kvkeep usage", "the default root"],
    ["kvkeep usage --root /var/cache/app --json", "as JSON: { root, bytes, count, autoBytes, namedBytes, … }"],
  ],
  async run(ctx) {
    const state = await checkRootToRead(ctx.root);
    const exists = state !== null;
    if (state === null) ctx.note(noRootYet(ctx.root));
    else noteIfNotRoot(ctx, state);
    const { caches, temps } = exists ? await readRoot(ctx.root) : { caches: [], temps: { count: 0, bytes: 0 } };
    const sum = totals(caches);
    ctx.print({ root: ctx.root, rootExists: exists, ...sum, tempFiles: temps.count, tempBytes: temps.bytes }, () => [
      `${ctx.root}: ${plural(sum.count, "cache")}, ${formatBytes(sum.bytes)}`,
      ...renderTable(
        [{ header: "" }, { header: "", align: "right" }, { header: "", align: "right" }],
        [
          ["  auto", plural(sum.autoCount, "cache"), formatBytes(sum.autoBytes)],
          ["  named", plural(sum.namedCount, "cache"), formatBytes(sum.namedBytes)],
          ...(sum.chunkCount > 0 ? [["  shared chunks", plural(sum.chunkCount, "chunk"), formatBytes(sum.chunkBytes)]] : []),
          ...(temps.count > 0 ? [["  temp files", plural(temps.count, "file"), formatBytes(temps.bytes)]] : []),
        ],
      ).slice(1),
      ...(sum.chunkCount > 0 ? [`  logical ${formatBytes(sum.logicalBytes)} (every cache with its own chunks): sharing ${sum.sharing.toFixed(2)}×`] : []),
    ]);
    return 0;
  },
};
