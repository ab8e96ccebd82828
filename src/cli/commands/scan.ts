import { DEFAULT_MAX_BYTES, readRoot, totals } from "../../store/inspect.js";
import type { Command, CommandContext } from "../command.js";
import { usageError } from "../errors.js";
import { budgetBar, type Column, formatAge, formatBytes, plural, renderTable } from "../format.js";
import { sizeOption } from "../option-values.js";
import { describeTarget, formatExpiry, lastUseOf, listingJson, listRemote, REMOTE_OPTIONS, type RemoteTarget, remoteProblem, remoteTarget, remoteTotals, withRemote } from "../remote-tier.js";
import { checkRootToRead, noRootYet, noteIfNotRoot } from "../root.js";
import { SCOPE_OPTIONS, scopeIdFromOptions, shownScope } from "../scope.js";

/** The columns a local and a remote listing start with (SCOPE only on a root that has scopes). */
const cacheColumns = (withScope: boolean): Column[] => [
  { header: "KEY" },
  ...(withScope ? [{ header: "SCOPE" }] : []),
  { header: "MODEL" },
  { header: "CONFIG" },
  { header: "SIZE", align: "right" },
  { header: "MESSAGES", align: "right" },
];

export const scanCommand: Command = {
  name: "scan",
  summary: "every cache: key, model, size, messages, last use (changes nothing)",
  usage: "kvkeep scan [--max-bytes SIZE] [--scope SCOPE | --scope-id ID] [--root DIR] [--json]  |  kvkeep scan --remote URL [--remote-prefix PREFIX] [--json]",
  description:
    "Lists every cache under the root with its size, the messages its committed state covers and when it was last used, and flags a cache a turn would not trust (no manifest, unreadable manifest). A cache of an isolation scope shows the scope's id (a hash: kvkeep never stores the scope itself) in a SCOPE column; --scope or --scope-id lists only that scope's. On a terminal a bar above the table shows the disk used by auto caches (evictable) and named ones against the retention budget. With --remote it lists what the shared Redis tier holds instead (the root is not read): each state's key, model, config, size, messages, when it was committed, when it was last uploaded or downloaded, when it expires, and whether its chunks are gone. It only reads: listing is not a use, and changes no expiry.",
  options: {
    "max-bytes": { type: "string", value: "SIZE", help: "the budget the bar is drawn against (default 4G, the store's default maxBytes)" },
    ...SCOPE_OPTIONS,
    ...REMOTE_OPTIONS,
  },
  positionals: { name: "", min: 0, max: 0 },
  examples: [
    ["kvkeep scan", "the table, with the budget bar on a terminal"],
    ["kvkeep scan --max-bytes 512M", "against your app's budget"],
    ["kvkeep scan --json | jq '.[] | select(.problem)'", "caches with a problem"],
    ["kvkeep scan --remote redis://redis:6379 --remote-prefix kvkeep:tenant-a:", "what the fleet shares in Redis for one tenant"],
  ],
  async run(ctx) {
    const target = remoteTarget(ctx.options);
    const scopeId = scopeIdFromOptions(ctx.options);
    if (target) {
      if (ctx.options["max-bytes"] !== undefined) throw usageError("--max-bytes draws the local budget bar; scan --remote lists the Redis tier (see kvkeep gc --remote-max-bytes).");
      return scanRemote(ctx, target, scopeId);
    }
    const budget = sizeOption(ctx.options, "max-bytes") ?? DEFAULT_MAX_BYTES;
    const state = await checkRootToRead(ctx.root);
    if (state === null) ctx.note(noRootYet(ctx.root));
    else noteIfNotRoot(ctx, state);
    const caches = state !== null ? (await readRoot(ctx.root)).caches.filter((c) => scopeId === undefined || c.scopeId === scopeId) : [];
    const withScope = caches.some((c) => c.scopeId !== null);
    const now = Date.now();
    ctx.print(
      // A chunked cache's chunks as a count, not its (up to thousands of) ids.
      caches.map((c) => ({
        ...c,
        chunks: c.chunks ? { context: c.chunks.context, count: c.chunks.ids.length, chunkBytes: c.chunks.chunkBytes } : null,
        lastUsed: new Date(c.lastUsedMs).toISOString(),
      })),
      () => {
        if (caches.length === 0) return `${ctx.root}: no caches`;
        const sum = totals(caches);
        const anyProblem = caches.some((c) => c.problem);
        // SIZE is the state's (a chunked cache's tail plus its chunks); LAYOUT shows once a cache is chunked.
        const anyChunked = caches.some((c) => c.layout === "chunked");
        const table = renderTable(
          [...cacheColumns(withScope), ...(anyChunked ? [{ header: "LAYOUT" }] : []), { header: "LAST USE" }, ...(anyProblem ? [{ header: "PROBLEM" }] : [])],
          caches.map((c) => [
            c.cacheKey,
            ...(withScope ? [shownScope(c.scopeId)] : []),
            c.modelId,
            c.configHash,
            formatBytes(c.logicalBytes),
            c.messageCount === null ? "?" : String(c.messageCount),
            ...(anyChunked ? [c.layout] : []),
            formatAge(now - c.lastUsedMs),
            ...(anyProblem ? [c.problem ?? ""] : []),
          ]),
        );
        const bar = ctx.io.stdout.isTTY ? [...budgetBar(sum, budget), ""] : [];
        const shared = sum.chunkCount > 0 ? ` on disk (${formatBytes(sum.logicalBytes)} logical: sharing ${sum.sharing.toFixed(2)}×)` : "";
        return [...bar, ...table, "", `${plural(sum.count, "cache")}, ${formatBytes(sum.bytes)}${shared} in ${ctx.root}`];
      },
    );
    return 0;
  },
};

/** `kvkeep scan --remote`: the states the Redis tier holds, newest commit first within a key. */
async function scanRemote(ctx: CommandContext, target: RemoteTarget, scopeId: string | undefined): Promise<number> {
  const listed = await withRemote(target, async (remote) => ({ states: await listRemote(remote), cluster: remote.cluster }));
  const { cluster } = listed;
  const states = listed.states.filter((s) => scopeId === undefined || (s.id.scopeId ?? null) === scopeId);
  const withScope = states.some((s) => s.id.scopeId != null);
  states.sort(
    (a, b) =>
      (a.id.cacheKey < b.id.cacheKey ? -1 : a.id.cacheKey > b.id.cacheKey ? 1 : 0) ||
      (a.id.modelId < b.id.modelId ? -1 : a.id.modelId > b.id.modelId ? 1 : 0) ||
      b.generation - a.generation,
  );
  const now = Date.now();
  ctx.print(
    states.map((s) => listingJson(s, now)),
    () => {
      const where = `${describeTarget(target)}${cluster ? ", a cluster" : ""}`;
      if (states.length === 0) return `${where}: no states`;
      const sum = remoteTotals(states);
      const anyProblem = states.some((s) => !s.whole);
      const anyChunked = states.some((s) => s.tokenChunks);
      const table = renderTable(
        [
          ...cacheColumns(withScope),
          ...(anyChunked ? [{ header: "CHUNKS", align: "right" as const }] : []),
          { header: "COMMITTED" },
          { header: "LAST USE" },
          { header: "EXPIRES" },
          ...(anyProblem ? [{ header: "PROBLEM" }] : []),
        ],
        states.map((s) => [
          s.id.cacheKey,
          ...(withScope ? [shownScope(s.id.scopeId)] : []),
          s.id.modelId,
          s.id.configHash,
          formatBytes(s.size),
          String(s.messageCount),
          ...(anyChunked ? [String(s.tokenChunks?.ids.length ?? 0)] : []),
          formatAge(now - s.committedAt),
          s.idleMs === null ? "?" : formatAge(now - lastUseOf(s, now)),
          formatExpiry(s.expiresInMs),
          ...(anyProblem ? [remoteProblem(s) ?? ""] : []),
        ]),
      );
      const shared = anyChunked ? " (of chunked states their tails: the token chunks they name are shared, counted by kvkeep gc --remote)" : "";
      return [...table, "", `${plural(sum.states, "state")}, ${formatBytes(sum.bytes)} in ${where}${shared}`];
    },
  );
  return 0;
}
