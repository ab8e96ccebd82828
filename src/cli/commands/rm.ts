import { assertCacheKey, assertModelId } from "../../keys/safe-key.js";
import { scanKeyDir } from "../../store/scan.js";
import { type CacheRecord, readRoot, recordsOf } from "../caches.js";
import type { CommandContext, ParsedCommand } from "../command.js";
import { CliError, usageError } from "../errors.js";
import { formatBytes, plural, renderTable } from "../format.js";
import { confirm } from "../io.js";
import { ADOPT_OPTION, assertKvkeepRoot, assertWritable, type RootState } from "../root.js";
import { openCliStore } from "../store.js";
import { describeTarget, listRemote, localRoot, type OpenRemote, REMOTE_OPTIONS, remoteTarget, sumSizes, withRemote } from "./remote.js";

interface Target {
  cacheKey: string;
  caches: CacheRecord[];
}

const sumBytes = (caches: readonly CacheRecord[]): number => caches.reduce((sum, c) => sum + c.bytes, 0);

export const rmCommand: ParsedCommand = {
  name: "rm",
  summary: "remove the caches of one or more keys (or --all, with confirmation); --remote: from Redis too",
  usage: "kvkeep rm <key>... [--model ID] [--dry-run] [--remote URL]  |  kvkeep rm --all [--yes] [--dry-run] [--remote URL]",
  description:
    "Removes every cache of each key given — for every model, or only --model's — on disk and from any store that opens the root later. A turn open on a removed cache fails at its commit with DELETED_DURING_TURN; rm does not wait for it. A key with no caches is reported and makes rm exit 1 (the others are still removed). --all removes every cache under the root: on a terminal it asks first; without a terminal it needs --yes. With --remote the shared Redis tier's copies go too (for --all, everything under --remote-prefix), and each delete leaves a tombstone so an upload still in flight from another machine cannot bring it back; a key then counts as found if it was on disk or in Redis. Redis is reached before anything is removed: when it cannot be, rm exits 1 and removes nothing. Only files kvkeep can prove are its own go (a cache whose manifest names it, its manifest, an empty lock file, a dead writer's temp); the summary counts every file removed. A directory that is not a kvkeep root (no .kvkeep/root.json) is refused unless --adopt.",
  options: {
    model: { type: "string", value: "ID", help: "only this model's caches of the keys" },
    all: { type: "boolean", help: "every cache under the root (and in Redis, with --remote)" },
    yes: { type: "boolean", short: "y", help: "do not ask before --all (required when stdin is not a terminal)" },
    "dry-run": { type: "boolean", help: "print what it would remove; remove nothing" },
    ...ADOPT_OPTION,
    ...REMOTE_OPTIONS,
  },
  positionals: { name: "a cache key (or --all)", min: 0, max: Infinity },
  examples: [
    ["kvkeep rm chat-42", "chat-42's caches, every model"],
    ["kvkeep rm chat-1 chat-2 --model qwen3-0.6b", "two conversations, one model"],
    ["kvkeep rm --all --dry-run", "list everything --all would remove"],
    ["kvkeep rm --all --yes", "everything, no question (scripts)"],
    ["kvkeep rm chat-42 --remote redis://redis:6379", "chat-42 here and for the whole fleet"],
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
    const target = remoteTarget(ctx.options);
    const root = await localRoot(ctx, target);
    if (root) assertKvkeepRoot(ctx, root);
    if (!target) return removeLocal(ctx, root!, { all, model, dryRun, keys });
    return withRemote(target, (remote) => removeBoth(ctx, root, remote, { all, model, dryRun, keys }));
  },
};

interface RmRequest {
  all: boolean;
  model: string | undefined;
  dryRun: boolean;
  keys: string[];
}

/** The local caches the request covers (none without a root), and the keys that have none. */
async function planLocal(ctx: CommandContext, root: RootState | null, req: RmRequest): Promise<{ targets: Target[]; missing: string[] }> {
  const targets: Target[] = [];
  const missing: string[] = [];
  if (root === null) return { targets, missing: req.all ? [] : [...new Set(req.keys)] };
  if (req.all) {
    const { caches } = await readRoot(ctx.root);
    const byKey = new Map<string, CacheRecord[]>();
    for (const c of caches.filter((c) => c.owned)) byKey.set(c.cacheKey, [...(byKey.get(c.cacheKey) ?? []), c]);
    for (const [cacheKey, list] of byKey) targets.push({ cacheKey, caches: list });
  } else {
    for (const cacheKey of new Set(req.keys)) {
      const dirs = await scanKeyDir(ctx.root, cacheKey, req.model);
      if (dirs.length === 0) missing.push(cacheKey);
      else targets.push({ cacheKey, caches: (await Promise.all(dirs.map((d) => recordsOf(ctx.root, d)))).flat().filter((c) => c.owned) });
    }
  }
  return { targets, missing };
}

/** `--all` needs a yes: on a terminal asked, otherwise --yes. `what` says what would go. */
async function confirmAll(ctx: CommandContext, what: string): Promise<void> {
  if (ctx.options.yes === true) return;
  if (!ctx.io.stdin.isTTY) {
    throw new CliError("CONFIRMATION_REQUIRED", `--all would remove ${what}; stdin is not a terminal, so pass --yes to confirm. Nothing was removed.`);
  }
  const yes = await confirm(ctx.io, `Remove all ${what}?`);
  if (!yes) throw new CliError("NOT_CONFIRMED", "not confirmed; nothing was removed.");
}

/** What a local removal did to the disk: every file removed, and the files left because nothing proves them kvkeep's. */
interface Removed {
  removedFiles: number;
  leftFiles: string[];
}

/** Remove the planned local caches through a store (which records the deletes for other processes). */
async function executeLocal(ctx: CommandContext, root: RootState, req: RmRequest, targets: readonly Target[]): Promise<Removed> {
  const removed: Removed = { removedFiles: 0, leftFiles: [] };
  if (req.dryRun || targets.length === 0) return removed;
  assertWritable(ctx.root, root, "remove caches");
  const { store, recoveredFiles } = await openCliStore(ctx);
  removed.removedFiles += recoveredFiles;
  const count = (report: { removedFiles: number; leftFiles: string[] }): void => {
    removed.removedFiles += report.removedFiles;
    removed.leftFiles.push(...report.leftFiles);
  };
  try {
    if (req.all) count(await store.deleteReporting({ all: true }));
    else for (const t of targets) count(await store.deleteReporting({ kvCacheKey: t.cacheKey, ...(req.model !== undefined ? { modelId: req.model } : {}) }));
  } finally {
    await store.close();
  }
  return removed;
}

/** The line that counts the files removed (and left), after a removal that ran. */
function filesLine(removed: Removed): string[] {
  const left = removed.leftFiles.length > 0 ? `; left ${plural(removed.leftFiles.length, "file")} that ${removed.leftFiles.length === 1 ? "is" : "are"} not kvkeep's` : "";
  return [`removed ${plural(removed.removedFiles, "file")}${left}`];
}

function localJson(t: Target, model: string | undefined) {
  return { cacheKey: t.cacheKey, ...(model !== undefined ? { modelId: model } : {}), caches: t.caches.length, bytes: sumBytes(t.caches) };
}

function missingError(req: RmRequest, missing: readonly string[], found: number, where: string): CliError {
  return new CliError(
    "NOT_FOUND",
    `no caches for ${missing.map((k) => JSON.stringify(k)).join(", ")}${req.model !== undefined ? ` with model ${JSON.stringify(req.model)}` : ""} ${where}${found > 0 ? ` (${found === 1 ? "the other key" : `the other ${found} keys`} ${req.dryRun ? "would be" : found === 1 ? "was" : "were"} removed)` : ""}.`,
  );
}

async function removeLocal(ctx: CommandContext, root: RootState, req: RmRequest): Promise<number> {
  const { targets, missing } = await planLocal(ctx, root, req);
  const allCaches = targets.flatMap((t) => t.caches);
  if (req.all && !req.dryRun && allCaches.length > 0) {
    await confirmAll(ctx, `${plural(allCaches.length, "cache")} (${formatBytes(sumBytes(allCaches))}) under ${ctx.root}`);
  }
  const files = await executeLocal(ctx, root, req, targets);

  const verb = req.dryRun ? "would remove" : "removed";
  ctx.print(
    { root: ctx.root, dryRun: req.dryRun, removed: targets.map((t) => localJson(t, req.model)), missing, removedFiles: files.removedFiles, leftFiles: files.leftFiles },
    () =>
      targets.length === 0
        ? req.all
          ? `nothing to remove: no caches under ${ctx.root}`
          : []
        : [
            ...renderTable(
              [{ header: "KEY" }, { header: "CACHES", align: "right" }, { header: "SIZE", align: "right" }],
              targets.map((t) => [t.cacheKey, String(t.caches.length), formatBytes(sumBytes(t.caches))]),
            ),
            `${verb} ${plural(allCaches.length, "cache")} (${formatBytes(sumBytes(allCaches))}) of ${plural(targets.length, "key")}${req.model !== undefined ? ` for model ${req.model}` : ""}`,
            ...(req.dryRun ? [] : filesLine(files)),
          ],
  );
  if (missing.length > 0) throw missingError(req, missing, targets.length, `under ${ctx.root}`);
  return 0;
}

interface RemoteRemoval {
  cacheKey: string;
  /** States the tier removed (listed, for a dry run). */
  states: number;
  bytes: number;
}

/**
 * rm with --remote: Redis is already reached (before anything was removed). The local
 * caches go first, through a store; then each key's remote copy, with a tombstone even
 * when nothing was listed (an upload in flight would otherwise publish after this).
 */
async function removeBoth(ctx: CommandContext, root: RootState | null, remote: OpenRemote, req: RmRequest): Promise<number> {
  const local = await planLocal(ctx, root, req);
  const listed = req.all
    ? await listRemote(remote)
    : (await Promise.all([...new Set(req.keys)].map((cacheKey) => listRemote(remote, { cacheKey, modelId: req.model })))).flat();
  const remoteKeys = req.all ? [...new Set(listed.map((s) => s.id.cacheKey))].sort() : [...new Set(req.keys)];
  const allCaches = local.targets.flatMap((t) => t.caches);
  const where = describeTarget(remote.target);
  if (req.all && !req.dryRun && (allCaches.length > 0 || listed.length > 0)) {
    await confirmAll(
      ctx,
      `${plural(allCaches.length, "cache")} (${formatBytes(sumBytes(allCaches))}) under ${ctx.root} and ${plural(listed.length, "remote state")} (${formatBytes(sumSizes(listed))}) in ${where}`,
    );
  }
  const files = root !== null ? await executeLocal(ctx, root, req, local.targets) : { removedFiles: 0, leftFiles: [] };

  const removals: RemoteRemoval[] = remoteKeys.map((cacheKey) => {
    const mine = listed.filter((s) => s.id.cacheKey === cacheKey);
    return { cacheKey, states: mine.length, bytes: sumSizes(mine) };
  });
  let failure: string | null = null;
  if (!req.dryRun) {
    if (req.all) {
      if (listed.length > 0) {
        const outcome = await remote.tier.remove({ all: true });
        if (!outcome.ok) failure = `everything under the prefix: ${outcome.reason}`;
      }
    } else {
      for (const removal of removals) {
        const outcome = await remote.tier.remove({ cacheKey: removal.cacheKey, modelId: req.model });
        if (!outcome.ok) {
          failure = `${JSON.stringify(removal.cacheKey)} and the keys after it: ${outcome.reason}`;
          removals.splice(removals.indexOf(removal));
          break;
        }
        removal.states = outcome.removed;
      }
    }
  }
  const removedRemote = removals.filter((r) => r.states > 0);
  const found = new Set([...local.targets.map((t) => t.cacheKey), ...removedRemote.map((r) => r.cacheKey)]);
  const missing = req.all || failure !== null ? [] : [...new Set(req.keys)].filter((k) => !found.has(k));

  const verb = req.dryRun ? "would remove" : "removed";
  const keyOrder = [...found].sort();
  ctx.print(
    {
      root: ctx.root,
      rootExists: root !== null,
      dryRun: req.dryRun,
      removed: local.targets.map((t) => localJson(t, req.model)),
      missing,
      removedFiles: files.removedFiles,
      leftFiles: files.leftFiles,
      remote: {
        url: remote.target.shown,
        keyPrefix: remote.target.keyPrefix,
        cluster: remote.cluster,
        removed: removedRemote.map((r) => ({ ...r, ...(req.model !== undefined ? { modelId: req.model } : {}) })),
      },
    },
    () => {
      if (keyOrder.length === 0) return req.all ? `nothing to remove: no caches under ${ctx.root} and no states in ${where}` : [];
      const remoteStates = removedRemote.reduce((sum, r) => sum + r.states, 0);
      const remoteBytes = removedRemote.reduce((sum, r) => sum + r.bytes, 0);
      return [
        ...renderTable(
          [{ header: "KEY" }, { header: "CACHES", align: "right" }, { header: "SIZE", align: "right" }, { header: "REMOTE", align: "right" }, { header: "REMOTE SIZE", align: "right" }],
          keyOrder.map((k) => {
            const t = local.targets.find((x) => x.cacheKey === k);
            const r = removedRemote.find((x) => x.cacheKey === k);
            return [k, String(t?.caches.length ?? 0), formatBytes(t ? sumBytes(t.caches) : 0), String(r?.states ?? 0), formatBytes(r?.bytes ?? 0)];
          }),
        ),
        `${verb} ${plural(allCaches.length, "cache")} (${formatBytes(sumBytes(allCaches))}) here and ${plural(remoteStates, "remote state")} (${formatBytes(remoteBytes)}) from ${where}${req.model !== undefined ? `, model ${req.model}` : ""}`,
        ...(req.dryRun || root === null ? [] : filesLine(files)),
      ];
    },
  );
  if (failure !== null) {
    throw new CliError("REMOTE_UNAVAILABLE", `the remote copies could not all be removed from ${where} (${failure}); run the same kvkeep rm again once Redis answers.`);
  }
  if (missing.length > 0) throw missingError(req, missing, found.size, `under ${ctx.root} or in ${where}`);
  return 0;
}
