import path from "node:path";
import { readRoot } from "../../store/inspect.js";
import { type CacheVerdict, chunkCheck, verifyCacheFiles, type VerifyStatus } from "../../store/verify-files.js";
import type { Command } from "../command.js";
import { EXIT_FAILURE } from "../errors.js";
import { formatBytes, formatElapsed, plural, renderTable } from "../format.js";
import { progressBar } from "../progress.js";
import { ADOPT_OPTION, assertKvkeepRoot, checkRoot, checkRootToRead, markAdopted, noRootYet, noteIfNotRoot } from "../root.js";

/** One cache's line of the report: where it is, and its verdict. */
interface Result extends CacheVerdict {
  /** The cache's scope id, null for the shared space. */
  scopeId: string | null;
  cacheKey: string;
  modelId: string;
  configHash: string;
  cachePath: string;
  bytes: number;
}

export const verifyCommand: Command = {
  name: "verify",
  summary: "checksum every cache against its manifest; --fix removes the damaged ones",
  usage: "kvkeep verify [--fix] [--root DIR] [--json]",
  description:
    "Reads every cache file and compares its XXH64 with the committed state its manifest records (and the model, key and config the manifest names); for a chunked cache, also every token chunk it names (there, its size, header, XXH64, and its identity recomputed from its parent, its tokens and the context), each shared chunk read once. A cache a turn holds right now — in any process — is reported busy, never waited for. Verify changes nothing unless --fix is given; then it removes each damaged cache with its manifest, lock file and emptied directories (and a corrupt chunk file, so every cache naming it goes too), and says how many files it removed. A .bin that no kvkeep manifest names is not a cache: reported foreign, never removed, not a failure. --fix refuses a directory that is not a kvkeep root (no .kvkeep/root.json) unless --adopt. A copied or restored root verifies as it is (its manifests are not rewritten, so last-use times survive). A read-only root is checked without locks. On a terminal a progress bar runs on stderr.",
  options: {
    fix: { type: "boolean", help: "remove the caches that fail (a turn would re-prime them anyway)" },
    ...ADOPT_OPTION,
  },
  positionals: { name: "", min: 0, max: 0 },
  examples: [
    ["kvkeep verify", "exit 1 if any cache is damaged or could not be checked"],
    ["kvkeep verify --fix", "remove the damaged ones"],
    ["kvkeep verify --json > report.json", "every cache's status: ok, bad, removed, busy or error"],
  ],
  async run(ctx) {
    const fix = ctx.options.fix === true;
    // Without --fix it only reads: a root that does not exist yet has 0 caches, all fine.
    const state = fix ? await checkRoot(ctx.root) : await checkRootToRead(ctx.root);
    if (state === null) {
      ctx.note(noRootYet(ctx.root));
    } else if (fix) {
      assertKvkeepRoot(ctx, state);
      markAdopted(ctx, state);
    } else {
      noteIfNotRoot(ctx, state);
    }
    const root = state ?? { readOnly: false, readOnlyReason: null };
    const started = Date.now();
    const { caches } = state === null ? { caches: [] } : await readRoot(ctx.root);
    const totalBytes = caches.reduce((sum, c) => sum + c.bytes, 0);
    const progress = progressBar(ctx.io.stderr, { label: "verifying", totalBytes, totalItems: caches.length, enabled: !ctx.json });
    const results: Result[] = [];
    // Chunks shared by several caches are read once per run.
    const chunks = chunkCheck(ctx.root);
    let doneBytes = 0;
    for (const cache of caches) {
      const base = { scopeId: cache.scopeId, cacheKey: cache.cacheKey, modelId: cache.modelId, configHash: cache.configHash, cachePath: cache.cachePath, bytes: cache.bytes };
      results.push({ ...base, ...(await verifyCacheFiles(ctx.root, cache, { fix, readOnly: root.readOnly, chunks })) });
      doneBytes += cache.bytes;
      progress.update(doneBytes, results.length);
    }
    progress.finish();

    const count = (status: VerifyStatus): number => results.filter((r) => r.status === status).length;
    const failed = count("bad") + count("error");
    const removedFiles = results.reduce((sum, r) => sum + (r.removedFiles ?? 0), 0);
    const summary =
      `${plural(results.length, "cache")} (${formatBytes(totalBytes)}) checked in ${formatElapsed(Date.now() - started)}: ` +
      [
        `${count("ok")} ok`,
        ...(count("bad") ? [`${count("bad")} damaged`] : []),
        ...(count("removed") ? [`${count("removed")} removed`] : []),
        ...(count("busy") ? [`${count("busy")} busy`] : []),
        ...(count("error") ? [`${plural(count("error"), "error")}`] : []),
        ...(count("foreign") ? [`${count("foreign")} not kvkeep's (left alone)`] : []),
      ].join(", ") +
      (root.readOnly ? ` (read-only root: checked without locks${fix ? ", nothing removed" : ""})` : "") +
      (fix && !root.readOnly ? `; removed ${plural(removedFiles, "file")}` : "");
    ctx.print({ root: ctx.root, readOnly: root.readOnly, results, removedFiles }, () => {
      const notable = results.filter((r) => r.status !== "ok");
      const table =
        notable.length === 0
          ? []
          : renderTable(
              [{ header: "STATUS" }, { header: "CACHE" }, { header: "REASON" }],
              notable.map((r) => [r.status, path.relative(ctx.root, r.cachePath), r.reason ?? ""]),
            );
      return [...table, ...(table.length > 0 ? [""] : []), summary];
    });
    return failed > 0 ? EXIT_FAILURE : 0;
  },
};

