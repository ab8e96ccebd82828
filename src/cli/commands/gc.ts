import { cacheKindOf } from "../../keys/safe-key.js";
import { DEFAULT_MAX_BYTES, DEFAULT_MAX_IDLE_MS, type IndexEntry, planSweep } from "../../retention/plan.js";
import type { EvictedCache } from "../../types.js";
import { durationOption, sizeOption } from "../args.js";
import { readRoot } from "../caches.js";
import type { ParsedCommand } from "../command.js";
import { CliError } from "../errors.js";
import { formatBytes, plural, renderTable } from "../format.js";
import { assertWritable, checkRoot } from "../root.js";
import { openCliStore } from "../store.js";

/**
 * What a sweep with these limits would evict, from a read-only look at the root: the idle
 * caches, then the least recently used until the rest fit (what retention's executor does,
 * minus its locks and re-checks, which can only keep more).
 */
async function planOnly(root: string, limits: { maxBytes: number; maxIdleMs: number; evictNamed: boolean }): Promise<{ evicted: EvictedCache[]; keptBytes: number }> {
  const { caches } = await readRoot(root);
  const entries: Array<[string, IndexEntry]> = caches
    .filter((c) => c.hasManifest)
    .map((c) => [c.cachePath, { cacheKey: c.cacheKey, modelId: c.modelId, configHash: c.configHash, kind: cacheKindOf(c.cacheKey), bytes: c.bytes, lastUsedMs: c.lastUsedMs }]);
  const plan = planSweep(entries, limits, Date.now());
  const evicted: EvictedCache[] = [];
  let remaining = plan.evictableBytes;
  const take = (c: (typeof plan.idle)[number]): void => {
    evicted.push({ cacheKey: c.entry.cacheKey, modelId: c.entry.modelId, configHash: c.entry.configHash, bytes: c.entry.bytes, reason: c.reason });
    remaining -= c.entry.bytes;
  };
  plan.idle.forEach(take);
  const order = plan.budgetOrder();
  for (let next = order.next(); remaining > limits.maxBytes && !next.done; next = order.next()) take(next.value);
  return { evicted, keptBytes: remaining };
}

export const gcCommand: ParsedCommand = {
  name: "gc",
  summary: "evict idle and least recently used auto caches down to a budget",
  usage: "kvkeep gc [--max-bytes SIZE] [--max-idle DURATION] [--evict-named] [--dry-run] [--root DIR] [--json]",
  description:
    "Runs one retention sweep, as a store does in the background: evictable caches (auto-mode ones; named ones too with --evict-named) unused for longer than --max-idle go first, then the least recently used until they fit in --max-bytes. A cache a turn holds — in any process — is kept, never waited for. Exits 1 if an eviction failed (e.g. a read-only file system).",
  options: {
    "max-bytes": { type: "string", value: "SIZE", help: "budget for the evictable caches: 512M, 2G, … (default 4G)" },
    "max-idle": { type: "string", value: "DURATION", help: "evict caches unused this long: 30m, 12h, 7d, … (default 24h)" },
    "evict-named": { type: "boolean", help: "let it evict named (custom-key) caches too, and count them against the budget" },
    "dry-run": { type: "boolean", help: "print what it would evict; remove nothing" },
  },
  positionals: { name: "", min: 0, max: 0 },
  examples: [
    ["kvkeep gc", "the store's defaults: 4 GiB of auto caches, 24 h idle"],
    ["kvkeep gc --max-bytes 2G --max-idle 7d --dry-run", "what that would evict"],
    ["kvkeep gc --max-bytes 0 --evict-named", "evict every cache not in use"],
  ],
  async run(ctx) {
    const maxBytes = sizeOption(ctx.options, "max-bytes") ?? DEFAULT_MAX_BYTES;
    const maxIdleMs = durationOption(ctx.options, "max-idle") ?? DEFAULT_MAX_IDLE_MS;
    const evictNamed = ctx.options["evict-named"] === true;
    const dryRun = ctx.options["dry-run"] === true;
    const root = await checkRoot(ctx.root);
    let result: { evicted: EvictedCache[]; keptBytes: number };
    let warnings: string[] = [];
    if (dryRun) {
      result = await planOnly(ctx.root, { maxBytes, maxIdleMs, evictNamed });
    } else {
      assertWritable(ctx.root, root, "evict caches");
      const opened = await openCliStore(ctx, { evictNamed });
      try {
        result = await opened.store.sweep({ maxBytes, maxIdleMs });
      } finally {
        await opened.store.close();
      }
      warnings = opened.warnings;
    }
    const freed = result.evicted.reduce((sum, e) => sum + e.bytes, 0);
    const verb = dryRun ? "would evict" : "evicted";
    ctx.print({ root: ctx.root, dryRun, maxBytes, maxIdleMs, evictNamed, ...result, freedBytes: freed, warnings }, () => [
      ...(result.evicted.length === 0
        ? []
        : renderTable(
            [{ header: "KEY" }, { header: "MODEL" }, { header: "SIZE", align: "right" }, { header: "WHY" }],
            result.evicted.map((e) => [e.cacheKey, e.modelId, formatBytes(e.bytes), e.reason === "idle" ? "idle" : "over budget"]),
          )),
      `${verb} ${plural(result.evicted.length, "cache")} (${formatBytes(freed)}); ${formatBytes(result.keptBytes)} of evictable caches ${dryRun ? "would stay" : "kept"}, budget ${formatBytes(maxBytes)}` +
        (result.keptBytes > maxBytes && warnings.length === 0 ? " (over it: caches in use are never evicted)" : ""),
    ]);
    if (warnings.length > 0) {
      throw new CliError("EVICTION_FAILED", `finished with ${plural(warnings.length, "problem")}, the first: ${warnings[0]}`);
    }
    return 0;
  },
};
