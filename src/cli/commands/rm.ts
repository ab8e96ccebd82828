import { assertCacheKey, assertModelId } from "../../keys/safe-key.js";
import { scanKeyDir } from "../../store/scan.js";
import { type CacheRecord, readRoot, recordsOf } from "../caches.js";
import type { ParsedCommand } from "../command.js";
import { CliError, usageError } from "../errors.js";
import { formatBytes, plural, renderTable } from "../format.js";
import { confirm } from "../io.js";
import { assertWritable, checkRoot } from "../root.js";
import { openCliStore } from "../store.js";

interface Target {
  cacheKey: string;
  caches: CacheRecord[];
}

const sumBytes = (caches: readonly CacheRecord[]): number => caches.reduce((sum, c) => sum + c.bytes, 0);

export const rmCommand: ParsedCommand = {
  name: "rm",
  summary: "remove the caches of one or more keys (or --all, with confirmation)",
  usage: "kvkeep rm <key>... [--model ID] [--dry-run]  |  kvkeep rm --all [--yes] [--dry-run]",
  description:
    "Removes every cache of each key given — for every model, or only --model's — on disk and from any store that opens the root later. A turn open on a removed cache fails at its commit with DELETED_DURING_TURN; rm does not wait for it. A key with no caches is reported and makes rm exit 1 (the others are still removed). --all removes every cache under the root: on a terminal it asks first; without a terminal it needs --yes.",
  options: {
    model: { type: "string", value: "ID", help: "only this model's caches of the keys" },
    all: { type: "boolean", help: "every cache under the root" },
    yes: { type: "boolean", short: "y", help: "do not ask before --all (required when stdin is not a terminal)" },
    "dry-run": { type: "boolean", help: "print what it would remove; remove nothing" },
  },
  positionals: { name: "a cache key (or --all)", min: 0, max: Infinity },
  examples: [
    ["kvkeep rm chat-42", "chat-42's caches, every model"],
    ["kvkeep rm chat-1 chat-2 --model qwen3-0.6b", "two conversations, one model"],
    ["kvkeep rm --all --dry-run", "list everything --all would remove"],
    ["kvkeep rm --all --yes", "everything, no question (scripts)"],
  ],
  async run(ctx) {
    const all = ctx.options.all === true;
    const model = typeof ctx.options.model === "string" ? ctx.options.model : undefined;
    const dryRun = ctx.options["dry-run"] === true;
    const keys = [...ctx.positionals];
    if (all && keys.length > 0) throw usageError(`--all takes no keys (got ${keys.map((k) => JSON.stringify(k)).join(" ")}).`);
    if (all && model !== undefined) throw usageError("--all removes every model's caches; --model goes with keys: kvkeep rm <key>... --model ID.");
    if (!all && keys.length === 0) throw usageError("give at least one cache key, or --all.");
    for (const key of keys) assertCacheKey(key, "cacheKey");
    if (model !== undefined) assertModelId(model, "--model");
    const root = await checkRoot(ctx.root);

    const targets: Target[] = [];
    const missing: string[] = [];
    if (all) {
      const { caches } = await readRoot(ctx.root);
      const byKey = new Map<string, CacheRecord[]>();
      for (const c of caches) byKey.set(c.cacheKey, [...(byKey.get(c.cacheKey) ?? []), c]);
      for (const [cacheKey, list] of byKey) targets.push({ cacheKey, caches: list });
    } else {
      for (const cacheKey of new Set(keys)) {
        const dirs = await scanKeyDir(ctx.root, cacheKey, model);
        if (dirs.length === 0) missing.push(cacheKey);
        else targets.push({ cacheKey, caches: (await Promise.all(dirs.map((d) => recordsOf(ctx.root, d)))).flat() });
      }
    }
    const allCaches = targets.flatMap((t) => t.caches);

    if (all && !dryRun && allCaches.length > 0 && ctx.options.yes !== true) {
      if (!ctx.io.stdin.isTTY) {
        throw new CliError("CONFIRMATION_REQUIRED", `--all would remove ${plural(allCaches.length, "cache")} (${formatBytes(sumBytes(allCaches))}) under ${ctx.root}; stdin is not a terminal, so pass --yes to confirm. Nothing was removed.`);
      }
      const yes = await confirm(ctx.io, `Remove all ${plural(allCaches.length, "cache")} (${formatBytes(sumBytes(allCaches))}) under ${ctx.root}?`);
      if (!yes) throw new CliError("NOT_CONFIRMED", "not confirmed; nothing was removed.");
    }
    if (!dryRun && targets.length > 0) {
      assertWritable(ctx.root, root, "remove caches");
      const { store } = await openCliStore(ctx);
      try {
        if (all) await store.delete({ all: true });
        else for (const t of targets) await store.delete({ kvCacheKey: t.cacheKey, ...(model !== undefined ? { modelId: model } : {}) });
      } finally {
        await store.close();
      }
    }

    const verb = dryRun ? "would remove" : "removed";
    ctx.print(
      {
        root: ctx.root,
        dryRun,
        removed: targets.map((t) => ({ cacheKey: t.cacheKey, ...(model !== undefined ? { modelId: model } : {}), caches: t.caches.length, bytes: sumBytes(t.caches) })),
        missing,
      },
      () =>
        targets.length === 0
          ? all
            ? `nothing to remove: no caches under ${ctx.root}`
            : []
          : [
              ...renderTable(
                [{ header: "KEY" }, { header: "CACHES", align: "right" }, { header: "SIZE", align: "right" }],
                targets.map((t) => [t.cacheKey, String(t.caches.length), formatBytes(sumBytes(t.caches))]),
              ),
              `${verb} ${plural(allCaches.length, "cache")} (${formatBytes(sumBytes(allCaches))}) of ${plural(targets.length, "key")}${model !== undefined ? ` for model ${model}` : ""}`,
            ],
    );
    if (missing.length > 0) {
      throw new CliError(
        "NOT_FOUND",
        `no caches for ${missing.map((k) => JSON.stringify(k)).join(", ")}${model !== undefined ? ` with model ${JSON.stringify(model)}` : ""} under ${ctx.root}${targets.length > 0 ? ` (${targets.length === 1 ? "the other key" : `the other ${targets.length} keys`} ${dryRun ? "would be" : targets.length === 1 ? "was" : "were"} removed)` : ""}.`,
      );
    }
    return 0;
  },
};
