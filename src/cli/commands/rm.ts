import { assertCacheKey, assertModelId } from "../../keys/safe-key.js";
import { type CacheRecord, readKey, readRoot } from "../../store/inspect.js";
import type { Command, CommandContext } from "../command.js";
import { CliError, usageError } from "../errors.js";
import { formatBytes, plural, renderTable } from "../format.js";
import { confirm } from "../io.js";
import { describeTarget, listRemote, localRoot, type OpenRemote, REMOTE_OPTIONS, remoteTarget, sumSizes, withRemote } from "../remote-tier.js";
import { ADOPT_OPTION, assertKvkeepRoot, assertWritable, type RootState } from "../root.js";
import { SCOPE_OPTIONS, scopeIdFromOptions, shownScope } from "../scope.js";
import { openCliStore } from "../store.js";

interface Target {
  /** The key's scope (its id), null for the shared space. */
  scopeId: string | null;
  cacheKey: string;
  caches: CacheRecord[];
}

/** One key of one scope, as a map key (NUL cannot occur in a key or a scope id). */
const spaceKey = (scopeId: string | null | undefined, cacheKey: string): string => `${scopeId ?? ""}\0${cacheKey}`;

const sumBytes = (caches: readonly CacheRecord[]): number => caches.reduce((sum, c) => sum + c.bytes, 0);

export const rmCommand: Command = {
  name: "rm",
  summary: "remove the caches of one or more keys (or --all, with confirmation); --remote: from Redis too",
  usage: "kvkeep rm <key>... [--model ID] [--scope SCOPE | --scope-id ID] [--dry-run] [--remote URL]  |  kvkeep rm --all [--yes] [--dry-run] [--remote URL]",
  description:
    "Removes every cache of each key given — for every model, or only --model's — on disk and from any store that opens the root later. A turn open on a removed cache fails at its commit with DELETED_DURING_TURN; rm does not wait for it. A key with no caches is reported and makes rm exit 1 (the others are still removed). Keys are those of the shared space unless --scope or --scope-id names an isolation scope: the same key in another scope is another conversation and stays. --all removes every cache under the root, every scope's: on a terminal it asks first; without a terminal it needs --yes. With --remote the shared Redis tier's copies go too (for --all, everything under --remote-prefix), and each delete leaves a tombstone so an upload still in flight from another machine cannot bring it back; a key then counts as found if it was on disk or in Redis. Redis is reached before anything is removed: when it cannot be, rm exits 1 and removes nothing. Only files kvkeep can prove are its own go (a cache whose manifest names it, its manifest, an empty lock file, a dead writer's temp); the summary counts every file removed. A directory that is not a kvkeep root (no .kvkeep/root.json) is refused unless --adopt.",
  options: {
    model: { type: "string", value: "ID", help: "only this model's caches of the keys" },
    all: { type: "boolean", help: "every cache under the root (and in Redis, with --remote)" },
    yes: { type: "boolean", short: "y", help: "do not ask before --all (required when stdin is not a terminal)" },
    "dry-run": { type: "boolean", help: "print what it would remove; remove nothing" },
    ...ADOPT_OPTION,
    ...SCOPE_OPTIONS,
    ...REMOTE_OPTIONS,
  },
  positionals: { name: "a cache key (or --all)", min: 0, max: Infinity },
  examples: [
    ["kvkeep rm chat-42", "chat-42's caches, every model"],
    ["kvkeep rm chat-1 chat-2 --model qwen3-0.6b", "two conversations, one model"],
    ["kvkeep rm --all --dry-run", "list everything --all would remove"],
    ["kvkeep rm --all --yes", "everything, no question (scripts)"],
    ["kvkeep rm chat-42 --remote redis://redis:6379", "chat-42 here and for the whole fleet"],
    ["kvkeep rm chat-42 --scope-id 5d41402abc4b2a76b9719d911017c592", "chat-42 of one scope (the SCOPE column of kvkeep scan)"],
  ],
  async run(ctx) {
    const all = ctx.options.all === true;
    const model = typeof ctx.options.model === "string" ? ctx.options.model : undefined;
    const dryRun = ctx.options["dry-run"] === true;
    const keys = [...ctx.positionals];
    if (all && keys.length > 0) throw usageError(`--all takes no keys (got ${keys.map((k) => JSON.stringify(k)).join(" ")}).`);
    if (all && model !== undefined) throw usageError("--all removes every model's caches; --model goes with keys: kvkeep rm <key>... --model ID.");
    const scopeId = scopeIdFromOptions(ctx.options);
    if (all && scopeId !== undefined) throw usageError("--all removes every scope's caches; --scope goes with keys: kvkeep rm <key>... --scope SCOPE.");
    if (!all && keys.length === 0) throw usageError("give at least one cache key, or --all.");
    for (const key of keys) assertCacheKey(key, "cacheKey");
    if (model !== undefined) assertModelId(model, "--model");
    const target = remoteTarget(ctx.options);
    const root = await localRoot(ctx, target);
    if (root) assertKvkeepRoot(ctx, root);
    const req: RmRequest = { all, model, dryRun, keys, scopeId: scopeId ?? null };
    if (!target) return removeLocal(ctx, root!, req);
    return withRemote(target, (remote) => removeBoth(ctx, root, remote, req));
  },
};

interface RmRequest {
  all: boolean;
  model: string | undefined;
  dryRun: boolean;
  keys: string[];
  /** The scope of the keys (its id), null for the shared space. */
  scopeId: string | null;
}

/** The local caches the request covers (none without a root), and the keys that have none. */
async function planLocal(ctx: CommandContext, root: RootState | null, req: RmRequest): Promise<{ targets: Target[]; missing: string[] }> {
  const targets: Target[] = [];
  const missing: string[] = [];
  if (root === null) return { targets, missing: req.all ? [] : [...new Set(req.keys)] };
  if (req.all) {
    const { caches } = await readRoot(ctx.root);
    const byKey = new Map<string, Target>();
    for (const c of caches.filter((c) => c.owned)) {
      const key = spaceKey(c.scopeId, c.cacheKey);
      if (!byKey.has(key)) byKey.set(key, { scopeId: c.scopeId, cacheKey: c.cacheKey, caches: [] });
      byKey.get(key)!.caches.push(c);
    }
    targets.push(...byKey.values());
  } else {
    for (const cacheKey of new Set(req.keys)) {
      const caches = await readKey(ctx.root, cacheKey, req.model, req.scopeId);
      if (caches === null) missing.push(cacheKey);
      else targets.push({ scopeId: req.scopeId, cacheKey, caches: caches.filter((c) => c.owned) });
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
    else {
      for (const t of targets) {
        count(
          await store.deleteReporting({
            kvCacheKey: t.cacheKey,
            ...(req.model !== undefined ? { modelId: req.model } : {}),
            ...(t.scopeId !== null ? { scopeId: t.scopeId } : {}),
          }),
        );
      }
    }
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
  return { scopeId: t.scopeId, cacheKey: t.cacheKey, ...(model !== undefined ? { modelId: model } : {}), caches: t.caches.length, bytes: sumBytes(t.caches) };
}

/** The SCOPE column, when any row is of a scope (a root without scopes prints as before). */
function scopeColumn(scopeIds: ReadonlyArray<string | null>): boolean {
  return scopeIds.some((s) => s !== null);
}

function missingError(req: RmRequest, missing: readonly string[], found: number, where: string): CliError {
  return new CliError(
    "NOT_FOUND",
    `no caches for ${missing.map((k) => JSON.stringify(k)).join(", ")}${req.model !== undefined ? ` with model ${JSON.stringify(req.model)}` : ""}${req.scopeId !== null ? ` in scope ${req.scopeId}` : ""} ${where}${found > 0 ? ` (${found === 1 ? "the other key" : `the other ${found} keys`} ${req.dryRun ? "would be" : found === 1 ? "was" : "were"} removed)` : ""}.`,
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
            ...(scopeColumn(targets.map((t) => t.scopeId))
              ? renderTable(
                  [{ header: "KEY" }, { header: "SCOPE" }, { header: "CACHES", align: "right" }, { header: "SIZE", align: "right" }],
                  targets.map((t) => [t.cacheKey, shownScope(t.scopeId), String(t.caches.length), formatBytes(sumBytes(t.caches))]),
                )
              : renderTable(
                  [{ header: "KEY" }, { header: "CACHES", align: "right" }, { header: "SIZE", align: "right" }],
                  targets.map((t) => [t.cacheKey, String(t.caches.length), formatBytes(sumBytes(t.caches))]),
                )),
            `${verb} ${plural(allCaches.length, "cache")} (${formatBytes(sumBytes(allCaches))}) of ${plural(targets.length, "key")}${req.model !== undefined ? ` for model ${req.model}` : ""}`,
            ...(req.dryRun ? [] : filesLine(files)),
          ],
  );
  if (missing.length > 0) throw missingError(req, missing, targets.length, `under ${ctx.root}`);
  return 0;
}

interface RemoteRemoval {
  scopeId: string | null;
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
    : (await Promise.all([...new Set(req.keys)].map((cacheKey) => listRemote(remote, { cacheKey, modelId: req.model, scopeId: req.scopeId })))).flat();
  // (scope, key) pairs: the same key in two scopes is two conversations.
  const remoteKeys: Array<{ scopeId: string | null; cacheKey: string }> = req.all
    ? [...new Map(listed.map((s) => [spaceKey(s.id.scopeId, s.id.cacheKey), { scopeId: s.id.scopeId ?? null, cacheKey: s.id.cacheKey }])).values()]
    : [...new Set(req.keys)].map((cacheKey) => ({ scopeId: req.scopeId, cacheKey }));
  const allCaches = local.targets.flatMap((t) => t.caches);
  const where = describeTarget(remote.target);
  if (req.all && !req.dryRun && (allCaches.length > 0 || listed.length > 0)) {
    await confirmAll(
      ctx,
      `${plural(allCaches.length, "cache")} (${formatBytes(sumBytes(allCaches))}) under ${ctx.root} and ${plural(listed.length, "remote state")} (${formatBytes(sumSizes(listed))}) in ${where}`,
    );
  }
  const files = root !== null ? await executeLocal(ctx, root, req, local.targets) : { removedFiles: 0, leftFiles: [] };

  const removals: RemoteRemoval[] = remoteKeys.map(({ scopeId, cacheKey }) => {
    const mine = listed.filter((s) => s.id.cacheKey === cacheKey && (s.id.scopeId ?? null) === scopeId);
    return { scopeId, cacheKey, states: mine.length, bytes: sumSizes(mine) };
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
        const outcome = await remote.tier.remove({ cacheKey: removal.cacheKey, modelId: req.model, scopeId: removal.scopeId });
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
  const found = new Map<string, { scopeId: string | null; cacheKey: string }>();
  for (const k of [...local.targets, ...removedRemote]) found.set(spaceKey(k.scopeId, k.cacheKey), { scopeId: k.scopeId, cacheKey: k.cacheKey });
  const missing = req.all || failure !== null ? [] : [...new Set(req.keys)].filter((k) => !found.has(spaceKey(req.scopeId, k)));

  const verb = req.dryRun ? "would remove" : "removed";
  const keyOrder = [...found.keys()].sort();
  const withScope = scopeColumn([...found.values()].map((k) => k.scopeId));
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
          [
            { header: "KEY" },
            ...(withScope ? [{ header: "SCOPE" }] : []),
            { header: "CACHES", align: "right" },
            { header: "SIZE", align: "right" },
            { header: "REMOTE", align: "right" },
            { header: "REMOTE SIZE", align: "right" },
          ],
          keyOrder.map((k) => {
            const { scopeId, cacheKey } = found.get(k)!;
            const t = local.targets.find((x) => spaceKey(x.scopeId, x.cacheKey) === k);
            const r = removedRemote.find((x) => spaceKey(x.scopeId, x.cacheKey) === k);
            return [
              cacheKey,
              ...(withScope ? [shownScope(scopeId)] : []),
              String(t?.caches.length ?? 0),
              formatBytes(t ? sumBytes(t.caches) : 0),
              String(r?.states ?? 0),
              formatBytes(r?.bytes ?? 0),
            ];
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
