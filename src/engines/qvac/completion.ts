/**
 * A completion handler over QVAC's llama.cpp addon (`@qvac/llm-llamacpp` 0.53.0, on Bare)
 * that keeps each conversation's KV cache with kvkeep: the turn skeleton (shared/turn.ts)
 * driving the QVAC engine half (engine.ts), which follows QVAC's own plugin flow: prime a
 * missing cache with the system prompt (`prefill`), send only the messages the cache does not
 * hold (`decideCachedHistorySlice`), commit only turns QVAC would commit
 * (`shouldCommitCachedTurn`), cancel through the addon on abort.
 *
 * What kvkeep changes in that flow, and why (measured in test/fixtures/QVAC-FACTS.md):
 * - The addon is never given a committed file as `cacheKey`. It writes its active key's state
 *   back to that path whenever a later run switches keys, outside any lock — so a committed
 *   file passed in place would be rewritten behind kvkeep's back. Each turn copies the
 *   committed state to `turn.savePath` (a reflink or `copy_file_range` where the filesystem
 *   can) and runs on that key; `commitTurn` renames it into place atomically, and a rollback
 *   deletes it, so the addon's next switch finds no file and writes nothing.
 * - Only a state whose manifest matches this model's fingerprint reaches the addon: a
 *   truncated file aborts the process, a same-shape state from other weights loads silently.
 * - A stale saved count (the history does not extend the cached conversation) runs the whole
 *   history on an empty state instead of appending it to a cache that does not hold its
 *   prefix; the turn's commit then replaces the stale cache.
 */
import { getDefaultStore } from "../../facade/default-store.js";
import { KvKeepError } from "../../errors.js";
import { silentLogger } from "../../logger.js";
import { CompletionTurns } from "../shared/turn.js";
import { assertSupportedAddon } from "./addon-version.js";
import { QvacEngine } from "./engine.js";
import type { QvacModel } from "./model.js";
import type { QvacCompletion, QvacCompletionOptions, QvacCompletionParams, QvacCompletionResult } from "./options.js";

class QvacCompletionImpl implements QvacCompletion {
  readonly #turns: CompletionTurns<QvacCompletionParams, QvacModel>;

  constructor(options: QvacCompletionOptions) {
    if (!options || typeof options !== "object") {
      throw new KvKeepError("INVALID_ARGUMENT", "createQvacCompletion needs an options object.", { argument: "options" });
    }
    assertSupportedAddon(options.model);
    if (options.fingerprint !== undefined && typeof options.fingerprint !== "string") {
      throw new KvKeepError("INVALID_ARGUMENT", "fingerprint must be a string.", { argument: "fingerprint" });
    }
    const logger = options.logger ?? silentLogger;
    // The model id (KEY_* codes, as everywhere in kvkeep) and the scope are checked here; the
    // fingerprint's file reads wait for the first call that uses a cache.
    this.#turns = new CompletionTurns(new QvacEngine(options.model, options.fingerprint, logger), {
      store: options.store ?? getDefaultStore(),
      modelId: options.modelId,
      scope: options.scope,
      logger: options.logger,
    });
  }

  completion(params: QvacCompletionParams): Promise<QvacCompletionResult> {
    return this.#turns.completion(params);
  }

  dispose(): Promise<void> {
    return this.#turns.dispose();
  }
}

/** A completion handler over a loaded QVAC model that keeps conversations' KV caches with kvkeep. */
export function createQvacCompletion(options: QvacCompletionOptions): QvacCompletion {
  return new QvacCompletionImpl(options);
}
