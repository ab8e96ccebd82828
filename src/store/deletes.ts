/**
 * Deletes racing turns, for one store: the in-memory record (this store's own deletes, seen
 * at once) and the shared on-disk one (src/durable/delete-log.ts: other processes' deletes,
 * and other stores' in this process). A delete is recorded twice — when it starts, before it
 * removes anything, and when it has removed everything — and a turn marks both records when
 * it takes its lock. A record after the mark covering the turn's cache means a delete
 * overlapped the turn: it must not keep what it installed (ARCHITECTURE.md, "A turn").
 */
import path from "node:path";
import { DeleteLog, type DeleteLogMark, type DeletePhase, deleteScope, scopeCovers } from "../durable/delete-log.js";
import { parseCachePath } from "../layout/paths.js";
import { type Logger, logLine } from "../logger.js";
import type { NativeFs } from "../native/index.js";

/**
 * What a delete covers: everything (`cacheKey` undefined), a key for every model, or a key's
 * model — a key of one isolation scope (`scopeId`; null or absent: the shared space).
 */
export interface DeleteScope {
  scopeId?: string | null | undefined;
  cacheKey?: string | undefined;
  modelId?: string | undefined;
}

/** Where both records were when a turn took its lock. */
export interface DeleteMark {
  readonly generation: number;
  /** Null when the shared log could not be read (only this store's own deletes are then seen). */
  readonly log: DeleteLogMark | null;
}

export class Deletes {
  readonly log: DeleteLog;
  readonly #root: string;
  readonly #logger: Logger;
  #generation = 0;
  /** Scope (as recorded: "", "<key>", "<key>/<model>") → the generation of its last record. */
  readonly #scopes = new Map<string, number>();

  constructor(root: string, fsBackend: NativeFs, logger: Logger) {
    this.#root = root;
    this.#logger = logger;
    this.log = new DeleteLog(root, fsBackend);
  }

  async mark(): Promise<DeleteMark> {
    const generation = this.#generation;
    let log: DeleteLogMark | null = null;
    try {
      log = await this.log.mark();
    } catch (error) {
      this.#logger.warn(logLine("could not read the delete log; deletes from other processes are not seen by this turn", { error }));
    }
    return { generation, log };
  }

  /** True when a delete recorded after `mark` (here or in any process) covers `cachePath`. */
  async coveredSince(cachePath: string, mark: DeleteMark): Promise<boolean> {
    const loc = parseCachePath(this.#root, cachePath);
    const modelDir = path.dirname(path.resolve(cachePath));
    const modelId = loc?.modelId ?? path.basename(modelDir);
    const cacheKey = loc?.cacheKey ?? path.basename(path.dirname(modelDir));
    const scopeId = loc?.scopeId ?? null;
    for (const [scope, generation] of this.#scopes) {
      if (generation > mark.generation && scopeCovers(scope, cacheKey, modelId, scopeId)) return true;
    }
    if (mark.log === null) return false;
    try {
      return await this.log.coveredSince(mark.log, cacheKey, modelId, scopeId);
    } catch (error) {
      this.#logger.warn(logLine("could not read the delete log; a delete from another process may be missed", { cachePath, error }));
      return false;
    }
  }

  /** Record the start (before anything is removed) or the end of a delete of `scopes`. */
  async record(scopes: readonly DeleteScope[], phase: DeletePhase): Promise<void> {
    const generation = ++this.#generation;
    for (const scope of scopes) {
      const recorded = deleteScope(scope);
      this.#scopes.set(recorded, generation);
      try {
        await this.log.append(recorded, phase);
      } catch (error) {
        // The delete goes on (it may be freeing a full disk); only other processes' turns
        // cannot see it, and this store's own turns still do.
        this.#logger.warn(logLine("could not record a delete in the delete log; a turn open in another process may commit its cache back", {
          root: this.#root,
          scope: recorded,
          error,
        }));
      }
    }
  }
}
