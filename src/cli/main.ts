/**
 * `kvkeep` — inspect and manage a cache root.
 *
 *   kvkeep [--root DIR] [--json] usage                 bytes and counts, auto vs named
 *   kvkeep [--root DIR] [--json] scan                  every cache: key, model, size, messages, last use
 *   kvkeep [--root DIR] [--json] verify [--fix]        checksum every cache against its manifest
 *   kvkeep [--root DIR] [--json] gc [--max-bytes N] [--max-idle-ms N]
 *   kvkeep [--root DIR] rm <cacheKey> [--model ID]  |  rm --all
 *   kvkeep backend                                      which native backend is in use
 *
 * The root defaults to $KVKEEP_DIR, else $XDG_CACHE_HOME/kvkeep, else ~/.cache/kvkeep.
 */
import { promises as fs } from "node:fs";
import { isKvKeepError, KvKeepError } from "../errors.js";
import { cachePathOf } from "../layout/paths.js";
import { type Logger, logLine } from "../logger.js";
import { readManifest, verifyCache, removeCacheFiles } from "../manifest/store.js";
import { processLocks } from "../locks/path-locks.js";
import { loadNativeFs } from "../native/index.js";
import { scanRoot } from "../store/scan.js";
import { KvCacheStoreImpl } from "../store/store.js";

interface Args {
  command: string | undefined;
  positional: string[];
  flags: Map<string, string | true>;
}

const VALUED = new Set(["--root", "--model", "--max-bytes", "--max-idle-ms"]);

export function parseArgs(argv: readonly string[]): Args {
  const flags = new Map<string, string | true>();
  const positional: string[] = [];
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i]!;
    if (arg.startsWith("--")) {
      const [name, inline] = arg.split("=", 2) as [string, string | undefined];
      if (VALUED.has(name)) {
        const value = inline ?? argv[++i];
        if (value === undefined) throw new KvKeepError("INVALID_ARGUMENT", `${name} needs a value.`, { argument: name });
        flags.set(name, value);
      } else flags.set(name, true);
    } else positional.push(arg);
  }
  return { command: positional.shift(), positional, flags };
}

function numberFlag(args: Args, name: string): number | undefined {
  const value = args.flags.get(name);
  if (value === undefined) return undefined;
  const n = Number(value);
  if (typeof value !== "string" || !Number.isFinite(n) || n < 0) {
    throw new KvKeepError("INVALID_ARGUMENT", `${name} must be a non-negative number.`, { argument: name });
  }
  return n;
}

const stderrLogger: Logger = {
  debug: () => {},
  info: (m) => process.stderr.write(`${m}\n`),
  warn: (m) => process.stderr.write(`${m}\n`),
  error: (m) => process.stderr.write(`${m}\n`),
};

function mib(bytes: number): string {
  return `${(bytes / 1024 / 1024).toFixed(2)} MiB`;
}

interface ScannedCache {
  cacheKey: string;
  modelId: string;
  configHash: string;
  cachePath: string;
  bytes: number;
  messageCount: number | null;
  lastUsed: string;
  problem: string | null;
}

async function scanCaches(root: string): Promise<ScannedCache[]> {
  const caches: ScannedCache[] = [];
  for await (const dir of scanRoot(root)) {
    for (const file of dir.files) {
      if (file.kind !== "cache") continue;
      const cachePath = cachePathOf(root, { cacheKey: dir.cacheKey, modelId: dir.modelId, configHash: file.configHash! });
      const st = await fs.stat(cachePath).catch(() => null);
      if (!st) continue;
      const read = await readManifest(cachePath);
      const manifestMtime = "manifest" in read ? (await fs.stat(cachePath.replace(/\.bin$/, ".meta.json")).catch(() => null))?.mtime : undefined;
      caches.push({
        cacheKey: dir.cacheKey,
        modelId: dir.modelId,
        configHash: file.configHash!,
        cachePath,
        bytes: st.size,
        messageCount: "manifest" in read ? (read.manifest.current ?? read.manifest.pending)?.messageCount ?? null : null,
        lastUsed: (manifestMtime ?? st.mtime).toISOString(),
        problem: "manifest" in read ? null : "missing" in read ? "no manifest" : read.error,
      });
    }
  }
  return caches;
}

async function run(args: Args, out: (line: string) => void): Promise<number> {
  const json = args.flags.has("--json");
  const print = (value: unknown, text: () => string): void => out(json ? JSON.stringify(value, null, 2) : text());
  if (args.command === "backend") {
    const nfs = loadNativeFs();
    print({ kind: nfs.kind, crossProcessLocks: nfs.crossProcessLocks, binaryPath: nfs.binaryPath }, () =>
      `${nfs.kind}${nfs.binaryPath ? ` (${nfs.binaryPath})` : ""}; cross-process locks: ${nfs.crossProcessLocks ? "yes" : "no"}`,
    );
    return 0;
  }
  const root = args.flags.get("--root");
  const store = new KvCacheStoreImpl({ ...(typeof root === "string" ? { root } : {}), logger: stderrLogger });
  try {
    await store.ready;
    switch (args.command) {
      case "usage": {
        const usage = await store.usage();
        print({ root: store.root, ...usage }, () =>
          `${store.root}: ${usage.count} caches, ${mib(usage.bytes)} (auto ${mib(usage.autoBytes)}, named ${mib(usage.namedBytes)})`,
        );
        return 0;
      }
      case "scan": {
        const caches = await scanCaches(store.root);
        print(caches, () =>
          caches.length === 0
            ? `${store.root}: no caches`
            : caches
                .map((c) => `${c.cacheKey}/${c.modelId}/${c.configHash}  ${mib(c.bytes)}  messages=${c.messageCount ?? "?"}  used=${c.lastUsed}${c.problem ? `  PROBLEM: ${c.problem}` : ""}`)
                .join("\n"),
        );
        return 0;
      }
      case "verify": {
        const fix = args.flags.has("--fix");
        const nfs = loadNativeFs();
        const results: Array<{ cachePath: string; status: "ok" | "bad" | "busy" | "removed"; reason?: string }> = [];
        for (const cache of await scanCaches(store.root)) {
          const read = await readManifest(cache.cachePath);
          const fingerprint = "manifest" in read ? read.manifest.fingerprint : null;
          // Under the cache's lock, never waiting: a cache a turn holds is reported busy.
          const lease = processLocks().tryAcquire(cache.cachePath);
          if (!lease) {
            results.push({ cachePath: cache.cachePath, status: "busy" });
            continue;
          }
          try {
            const verdict = await verifyCache(nfs, cache.cachePath, { ...cache, fingerprint }, { checksum: true });
            if (verdict.ok) results.push({ cachePath: cache.cachePath, status: "ok" });
            else {
              const reason = verdict.missing ? "file vanished" : verdict.reason;
              if (fix) await removeCacheFiles(cache.cachePath);
              results.push({ cachePath: cache.cachePath, status: fix ? "removed" : "bad", reason });
            }
          } finally {
            lease.release();
          }
        }
        print(results, () => results.map((r) => `${r.status.padEnd(7)} ${r.cachePath}${r.reason ? `  (${r.reason})` : ""}`).join("\n") || "no caches");
        return results.some((r) => r.status === "bad") ? 1 : 0;
      }
      case "gc": {
        const maxBytes = numberFlag(args, "--max-bytes");
        const maxIdleMs = numberFlag(args, "--max-idle-ms");
        const result = await store.sweep({ ...(maxBytes !== undefined ? { maxBytes } : {}), ...(maxIdleMs !== undefined ? { maxIdleMs } : {}) });
        print(result, () =>
          [...result.evicted.map((e) => `evicted ${e.cacheKey}/${e.modelId} ${mib(e.bytes)} (${e.reason})`), `kept ${mib(result.keptBytes)} of evictable caches`].join("\n"),
        );
        return 0;
      }
      case "rm": {
        if (args.flags.has("--all")) await store.delete({ all: true });
        else {
          const key = args.positional[0];
          if (!key) throw new KvKeepError("INVALID_ARGUMENT", "rm needs a cache key, or --all.", { argument: "cacheKey" });
          const model = args.flags.get("--model");
          await store.delete({ kvCacheKey: key, ...(typeof model === "string" ? { modelId: model } : {}) });
        }
        print({ ok: true }, () => "removed");
        return 0;
      }
      default:
        out("usage: kvkeep [--root DIR] [--json] <usage | scan | verify [--fix] | gc [--max-bytes N] [--max-idle-ms N] | rm <key> [--model ID] | rm --all | backend>");
        return args.command === undefined || args.command === "help" ? 0 : 2;
    }
  } finally {
    await store.close();
  }
}

export async function main(argv: readonly string[], out: (line: string) => void = (l) => process.stdout.write(`${l}\n`)): Promise<number> {
  try {
    return await run(parseArgs(argv), out);
  } catch (error) {
    process.stderr.write(`${isKvKeepError(error) ? logLine(`${error.code}: ${error.message}`) : String(error)}\n`);
    return isKvKeepError(error) && error.code === "INVALID_ARGUMENT" ? 2 : 1;
  }
}
