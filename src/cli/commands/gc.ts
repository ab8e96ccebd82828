import type { RemoteListing, RemoteServerUsage, TokenChunkCollection } from "../../remote/types.js";
import { DEFAULT_MAX_BYTES, DEFAULT_MAX_IDLE_MS, type IndexEntry, planEvictions, planRootSweep, type RetentionLimits } from "../../store/inspect.js";
import type { EvictedCache } from "../../types.js";
import type { Command, CommandContext } from "../command.js";
import { CliError } from "../errors.js";
import { formatBytes, plural, renderTable } from "../format.js";
import { durationOption, sizeOption } from "../option-values.js";
import { cacheKind, formatSpan, lastUseOf, listRemote, localRoot, type OpenRemote, REMOTE_OPTIONS, remoteTarget, remoteTotals, ttlNote, withRemote } from "../remote-tier.js";
import { ADOPT_OPTION, assertKvkeepRoot, assertWritable, type RootState } from "../root.js";
import { shownScope } from "../scope.js";
import { openCliStore } from "../store.js";

export const gcCommand: Command = {
  name: "gc",
  summary: "evict idle and least recently used auto caches down to a budget; --remote: report (and trim) Redis too",
  usage: "kvkeep gc [--max-bytes SIZE] [--max-idle DURATION] [--evict-named] [--dry-run] [--root DIR] [--json] [--remote URL [--remote-max-bytes SIZE] [--remote-max-idle DURATION]]",
  description:
    "Runs one retention sweep, as a store does in the background: evictable caches (auto-mode ones; named ones too with --evict-named) unused for longer than --max-idle go first, then the least recently used until they fit in --max-bytes. A cache a turn holds — in any process — is kept, never waited for. Exits 1 if an eviction failed (e.g. a read-only file system). Only files kvkeep can prove are its own are removed — evicted caches (a manifest names each), what crashed writers left (temps named by kvkeep, manifests of vanished caches) and token chunks no manifest references any more (chunk GC: chunks under .kvkeep/chunks/, touched or written in the last 2 s kept) — and the summary counts every file removed. A directory that is not a kvkeep root (no .kvkeep/root.json) is refused unless --adopt. With --remote it also reports the shared Redis tier: its states by kind, Redis's memory and maxmemory policy. Remote states are not evicted by default — each expires by its TTL after its last upload or download, and Redis evicts under its maxmemory policy — unless --remote-max-bytes or --remote-max-idle is given: then the evictable remote states (auto; named with --evict-named) idle longer than --remote-max-idle go, then the least recently used until they fit in --remote-max-bytes. A remote state re-committed since the listing is kept; a machine that still has a cache uploads it again at its next commit. States whose chunks Redis already dropped are removed in any case (a fetch would miss), and so are the token chunks (of chunked caches) that no remote state names and nothing has used for an hour.",
  options: {
    "max-bytes": { type: "string", value: "SIZE", help: "budget for the evictable caches: 512M, 2G, … (default 4G)" },
    "max-idle": { type: "string", value: "DURATION", help: "evict caches unused this long: 30m, 12h, 7d, … (default 24h)" },
    "evict-named": { type: "boolean", help: "let it evict named (custom-key) caches too, and count them against the budget (remote ones too)" },
    "dry-run": { type: "boolean", help: "print what it would evict; remove nothing (here or in Redis)" },
    ...ADOPT_OPTION,
    ...REMOTE_OPTIONS,
    "remote-max-bytes": { type: "string", value: "SIZE", help: "with --remote: budget for the evictable remote states (default: none)" },
    "remote-max-idle": { type: "string", value: "DURATION", help: "with --remote: evict remote states unused this long (default: none, they expire by TTL)" },
  },
  positionals: { name: "", min: 0, max: 0 },
  examples: [
    ["kvkeep gc", "the store's defaults: 4 GiB of auto caches, 24 h idle"],
    ["kvkeep gc --max-bytes 2G --max-idle 7d --dry-run", "what that would evict"],
    ["kvkeep gc --max-bytes 0 --evict-named", "evict every cache not in use"],
    ["kvkeep gc --remote redis://redis:6379", "the local sweep, and what Redis holds and uses"],
    ["kvkeep gc --remote redis://redis:6379 --remote-max-bytes 20G --remote-max-idle 3d --dry-run", "what trimming the fleet's tier would evict"],
  ],
  async run(ctx) {
    const limits: RetentionLimits = {
      maxBytes: sizeOption(ctx.options, "max-bytes") ?? DEFAULT_MAX_BYTES,
      maxIdleMs: durationOption(ctx.options, "max-idle") ?? DEFAULT_MAX_IDLE_MS,
      evictNamed: ctx.options["evict-named"] === true,
    };
    const remoteLimits = {
      maxBytes: sizeOption(ctx.options, "remote-max-bytes") ?? null,
      maxIdleMs: durationOption(ctx.options, "remote-max-idle") ?? null,
      evictNamed: limits.evictNamed,
    };
    const dryRun = ctx.options["dry-run"] === true;
    const target = remoteTarget(ctx.options, ["remote-max-bytes", "remote-max-idle"]);
    const root = await localRoot(ctx, target);
    if (root) assertKvkeepRoot(ctx, root);
    if (!target) {
      const local = await sweepLocal(ctx, root!, limits, dryRun);
      ctx.print({ root: ctx.root, dryRun, ...limitsJson(limits), ...local }, () => localLines(local, limits, dryRun));
      failIfProblems(local.warnings);
      return 0;
    }
    return withRemote(target, async (remote) => {
      // Redis is reached (and listed) before the local sweep: when it cannot be, nothing changes.
      const states = await listRemote(remote);
      const local = root === null ? null : await sweepLocal(ctx, root, limits, dryRun);
      const trimmed = await gcRemote(remote, states, remoteLimits, dryRun);
      ctx.print(
        {
          root: ctx.root,
          rootExists: root !== null,
          dryRun,
          ...limitsJson(limits),
          ...(local ?? { evicted: [], keptBytes: 0, freedBytes: 0, removedFiles: 0, recoveredFiles: 0, removedChunks: 0, removedChunkBytes: 0, warnings: [] }),
          remote: trimmed,
        },
        () => [...(local ? [...localLines(local, limits, dryRun), ""] : []), ...remoteLines(trimmed, dryRun)],
      );
      failIfProblems([...(local?.warnings ?? []), ...trimmed.warnings]);
      return 0;
    });
  },
};

interface LocalGc {
  evicted: EvictedCache[];
  keptBytes: number;
  freedBytes: number;
  /** Every file removed: the evicted caches' files, manifests and lock files, and `recoveredFiles`. */
  removedFiles: number;
  /** Of those, what the store's recovery at open removed: dead writers' temps, manifests of vanished caches. */
  recoveredFiles: number;
  /** Of those, chunk files no manifest referenced any more (chunk GC), and their bytes. */
  removedChunks: number;
  removedChunkBytes: number;
  warnings: string[];
}

const limitsJson = (limits: RetentionLimits) => ({ maxBytes: limits.maxBytes, maxIdleMs: limits.maxIdleMs, evictNamed: limits.evictNamed });

/** One sweep of the root (a plan only, for a dry run). */
async function sweepLocal(ctx: CommandContext, root: RootState, limits: RetentionLimits, dryRun: boolean): Promise<LocalGc> {
  let result: { evicted: EvictedCache[]; keptBytes: number; removedFiles: number; removedChunks: number; removedChunkBytes: number };
  let warnings: string[] = [];
  let recoveredFiles = 0;
  if (dryRun) {
    result = { ...(await planRootSweep(ctx.root, limits)), removedFiles: 0, removedChunks: 0, removedChunkBytes: 0 };
  } else {
    assertWritable(ctx.root, root, "evict caches");
    const opened = await openCliStore(ctx, { evictNamed: limits.evictNamed });
    try {
      result = await opened.store.sweep({ maxBytes: limits.maxBytes, maxIdleMs: limits.maxIdleMs });
    } finally {
      await opened.store.close();
    }
    warnings = opened.warnings;
    recoveredFiles = opened.recoveredFiles;
  }
  return {
    evicted: result.evicted,
    keptBytes: result.keptBytes,
    freedBytes: result.evicted.reduce((sum, e) => sum + e.bytes, 0),
    removedFiles: result.removedFiles + recoveredFiles,
    recoveredFiles,
    removedChunks: result.removedChunks,
    removedChunkBytes: result.removedChunkBytes,
    warnings,
  };
}

function localLines(local: LocalGc, limits: RetentionLimits, dryRun: boolean): string[] {
  const verb = dryRun ? "would evict" : "evicted";
  return [
    ...(local.evicted.length === 0
      ? []
      : local.evicted.some((e) => e.scopeId !== null)
        ? renderTable(
            [{ header: "KEY" }, { header: "SCOPE" }, { header: "MODEL" }, { header: "SIZE", align: "right" }, { header: "WHY" }],
            local.evicted.map((e) => [e.cacheKey, shownScope(e.scopeId), e.modelId, formatBytes(e.bytes), e.reason === "idle" ? "idle" : "over budget"]),
          )
        : renderTable(
            [{ header: "KEY" }, { header: "MODEL" }, { header: "SIZE", align: "right" }, { header: "WHY" }],
            local.evicted.map((e) => [e.cacheKey, e.modelId, formatBytes(e.bytes), e.reason === "idle" ? "idle" : "over budget"]),
          )),
    `${verb} ${plural(local.evicted.length, "cache")} (${formatBytes(local.freedBytes)}); ${formatBytes(local.keptBytes)} of evictable caches ${dryRun ? "would stay" : "kept"}, budget ${formatBytes(limits.maxBytes)}` +
      (local.keptBytes > limits.maxBytes && local.warnings.length === 0 ? " (over it: caches in use are never evicted)" : ""),
    ...(dryRun ? [] : [removedFilesLine(local)]),
  ];
}

/** Every file gc removed, said in so many words (a sweep's caches and recovery's leftovers). */
function removedFilesLine(local: LocalGc): string {
  const parts = [
    ...(local.recoveredFiles > 0 ? [`${local.recoveredFiles} of them left by crashed writers`] : []),
    ...(local.removedChunks > 0 ? [`${plural(local.removedChunks, "unreferenced chunk")}, ${formatBytes(local.removedChunkBytes)}`] : []),
  ];
  return `removed ${plural(local.removedFiles, "file")}${parts.length > 0 ? ` (${parts.join("; ")})` : ""}`;
}

function failIfProblems(warnings: readonly string[]): void {
  if (warnings.length > 0) {
    throw new CliError("EVICTION_FAILED", `finished with ${plural(warnings.length, "problem")}, the first: ${warnings[0]}`);
  }
}

type RemoteReason = "idle" | "budget" | "chunks gone";

interface RemoteGc {
  url: string;
  keyPrefix: string;
  cluster: boolean;
  states: number;
  bytes: number;
  autoBytes: number;
  namedBytes: number;
  /** What Redis reports of its memory; null when it would not say. */
  server: RemoteServerUsage | null;
  maxBytes: number | null;
  maxIdleMs: number | null;
  evicted: Array<{ scopeId: string | null; cacheKey: string; modelId: string; configHash: string; bytes: number; reason: RemoteReason; generation: number }>;
  freedBytes: number;
  /** Evictable remote bytes left (auto; named too with --evict-named). */
  keptBytes: number;
  /** The soonest a listed state expires by its TTL; null when none does. */
  soonestExpiryMs: number | null;
  /** Token chunks: held, named by no state, removed (null: the tier could not say). */
  tokenChunks: TokenChunkCollection | null;
  warnings: string[];
}

/**
 * A token chunk no published state names is removed once unused for this long: an upload
 * uses every chunk it names before it publishes its record, so a younger one may belong to
 * an upload still under way (the hour a pending upload's data also lives).
 */
export const REMOTE_CHUNK_MIN_IDLE_MS = 3_600_000;

const UNLIMITED = Number.MAX_SAFE_INTEGER;

/**
 * The remote half of gc: plan over the listing (idle from the server's idle time, see
 * lastUseOf), then evict each victim only while it is still the listed commit.
 */
async function gcRemote(
  remote: OpenRemote,
  states: readonly RemoteListing[],
  limits: { maxBytes: number | null; maxIdleMs: number | null; evictNamed: boolean },
  dryRun: boolean,
): Promise<RemoteGc> {
  const now = Date.now();
  const usage = await remote.tier.serverUsage();
  const whole = states.filter((s) => s.whole);
  const planned: Array<{ state: RemoteListing; reason: RemoteReason }> = states.filter((s) => !s.whole).map((state) => ({ state, reason: "chunks gone" }));
  let keptBytes = whole.filter((s) => limits.evictNamed || cacheKind(s) === "auto").reduce((sum, s) => sum + s.size, 0);
  if (limits.maxBytes !== null || limits.maxIdleMs !== null) {
    const entries: Array<[string, IndexEntry]> = whole.map((s, i) => [
      String(i),
      { scopeId: s.id.scopeId ?? null, cacheKey: s.id.cacheKey, modelId: s.id.modelId, configHash: s.id.configHash, kind: cacheKind(s), bytes: s.size, lastUsedMs: lastUseOf(s, now) },
    ]);
    const maxBytes = limits.maxBytes ?? UNLIMITED;
    const picked = planEvictions(entries, { maxBytes, maxIdleMs: limits.maxIdleMs ?? UNLIMITED, evictNamed: limits.evictNamed }, now);
    keptBytes = picked.keptBytes;
    for (const v of picked.victims) planned.push({ state: whole[Number(v.cachePath)]!, reason: v.reason });
  }
  const evicted: RemoteGc["evicted"] = [];
  const warnings: string[] = [];
  for (const { state, reason } of planned) {
    if (!dryRun) {
      const outcome = await remote.tier.evict(state);
      if (!outcome.ok) {
        warnings.push(`could not evict the remote state of ${JSON.stringify(state.id.cacheKey)} (${state.id.modelId}): ${outcome.reason}`);
        if (reason !== "chunks gone") keptBytes += state.size;
        continue;
      }
      if (!outcome.evicted) {
        // Re-committed (or removed) since the listing: newer use, kept.
        if (reason !== "chunks gone") keptBytes += state.size;
        continue;
      }
    }
    evicted.push({ scopeId: state.id.scopeId ?? null, cacheKey: state.id.cacheKey, modelId: state.id.modelId, configHash: state.id.configHash, bytes: state.size, reason, generation: state.generation });
  }
  // After the evictions: the chunks only an evicted state named go in the same run.
  let tokenChunks: TokenChunkCollection | null = null;
  if (remote.tier.collectTokenChunks) {
    const collected = await remote.tier.collectTokenChunks({ minIdleMs: REMOTE_CHUNK_MIN_IDLE_MS, dryRun });
    if (collected.ok) tokenChunks = collected.collection;
    else warnings.push(`could not collect the remote token chunks: ${collected.reason}`);
  }
  const expiring = states.map((s) => s.expiresInMs).filter((ms): ms is number => ms !== null);
  const sum = remoteTotals(states);
  return {
    url: remote.target.shown,
    keyPrefix: remote.target.keyPrefix,
    cluster: remote.cluster,
    states: sum.states,
    bytes: sum.bytes,
    autoBytes: sum.autoBytes,
    namedBytes: sum.namedBytes,
    server: usage.ok ? usage.usage : null,
    maxBytes: limits.maxBytes,
    maxIdleMs: limits.maxIdleMs,
    evicted,
    freedBytes: evicted.filter((e) => e.reason !== "chunks gone").reduce((total, e) => total + e.bytes, 0),
    keptBytes,
    soonestExpiryMs: expiring.length > 0 ? Math.min(...expiring) : null,
    tokenChunks,
    warnings,
  };
}

function remoteLines(gc: RemoteGc, dryRun: boolean): string[] {
  const memory = gc.server
    ? `; Redis uses ${formatBytes(gc.server.usedMemoryBytes)}${gc.server.maxMemoryBytes === null ? ", no maxmemory limit" : ` of its maxmemory ${formatBytes(gc.server.maxMemoryBytes)}`} (policy ${gc.server.policy}${gc.server.nodes > 1 ? `, ${gc.server.nodes} masters` : ""})`
    : "; Redis did not report its memory";
  const head = `remote ${gc.url} (prefix ${gc.keyPrefix}): ${plural(gc.states, "state")}, ${formatBytes(gc.bytes)} (auto ${formatBytes(gc.autoBytes)}, named ${formatBytes(gc.namedBytes)})${memory}`;
  const verb = dryRun ? "would evict" : "evicted";
  const table =
    gc.evicted.length === 0
      ? []
      : renderTable(
          [{ header: "KEY" }, { header: "MODEL" }, { header: "SIZE", align: "right" }, { header: "WHY" }],
          gc.evicted.map((e) => [e.cacheKey, e.modelId, formatBytes(e.bytes), e.reason === "budget" ? "over budget" : e.reason]),
        );
  const limited = gc.maxBytes !== null || gc.maxIdleMs !== null;
  const outcome = limited
    ? `${verb} ${plural(gc.evicted.length, "remote state")} (${formatBytes(gc.freedBytes)}); ${formatBytes(gc.keptBytes)} of evictable remote states ${dryRun ? "would stay" : "kept"}` +
      `${gc.maxBytes !== null ? `, budget ${formatBytes(gc.maxBytes)}` : ""}${gc.maxIdleMs !== null ? `, idle limit ${formatSpan(gc.maxIdleMs)}` : ""}`
    : `${gc.evicted.length > 0 ? `${verb} ${plural(gc.evicted.length, "remote state")} whose chunks are gone; ` : ""}no remote state evicted for age or size without --remote-max-bytes or --remote-max-idle: ${ttlNote(gc.soonestExpiryMs)} (${gc.server?.policy ?? "unknown"})`;
  const chunks = gc.tokenChunks;
  const chunkLine =
    chunks === null || chunks.chunks === 0
      ? []
      : [
          `token chunks: ${plural(chunks.chunks, "chunk")} (${formatBytes(chunks.bytes)}), ${chunks.unreferenced} named by no state (${formatBytes(chunks.unreferencedBytes)}): ` +
            `${dryRun ? "would remove" : "removed"} ${chunks.removed} (${formatBytes(chunks.removedBytes)})` +
            (chunks.unreferenced - chunks.removed - chunks.idleUnknown > 0
              ? `; ${chunks.unreferenced - chunks.removed - chunks.idleUnknown} used in the last ${formatSpan(REMOTE_CHUNK_MIN_IDLE_MS)} kept (an upload may be under way)`
              : "") +
            (chunks.idleUnknown > 0 ? `; ${chunks.idleUnknown} kept: Redis reports no idle times under its maxmemory policy (LFU)` : ""),
        ];
  return [head, ...table, outcome, ...chunkLine];
}
