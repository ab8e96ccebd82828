/**
 * Deleting from the Redis tier (`store.delete`, `kvkeep rm --remote`). A delete takes a
 * generation of the fleet's clock, like a commit: it removes the records ordered before it
 * and leaves a tombstone that refuses every upload ordered before it (scripts.ts: REMOVE,
 * checked by PUBLISH). Deleting everything marks `deleted-all` first, which an upload
 * checks right after publishing (upload.ts), then unlinks every key of the prefix.
 */
import { assertCacheKey, assertModelId } from "../../keys/safe-key.js";
import type { RemoteDeleteTarget, RemoveOutcome } from "../types.js";
import { assertScopeId, invalidArgument } from "./arguments.js";
import { failureReason, type RedisCalls } from "./calls.js";
import { asText } from "./connections.js";
import { RAISE_TO, REMOVE } from "./scripts.js";

/** Tombstones outlive any upload that could still be in flight when its delete ran. */
export const TOMBSTONE_TTL_SECONDS = 24 * 3600;

export class Deleter {
  readonly #calls: RedisCalls;

  constructor(calls: RedisCalls) {
    this.#calls = calls;
  }

  async remove(target: RemoteDeleteTarget): Promise<RemoveOutcome> {
    if (!target || typeof target !== "object") throw invalidArgument("target", "remove needs { cacheKey, modelId? } or { all: true }.");
    const generation = await this.#calls.nextGeneration("control");
    if (!generation.ok) return { ok: false, reason: failureReason(generation, "reserving a generation") };
    const outcome = "all" in target ? await this.#removeAll(generation.value) : await this.#removeKey(target, generation.value);
    if (outcome.ok) this.#calls.counters.removes += outcome.removed;
    return outcome;
  }

  async #removeKey(target: Exclude<RemoteDeleteTarget, { all: true }>, generation: number): Promise<RemoveOutcome> {
    assertCacheKey(target.cacheKey, "cacheKey");
    if (target.modelId !== undefined) assertModelId(target.modelId);
    assertScopeId(target.scopeId);
    const { keys } = this.#calls;
    // One scope's key: its heads and tombstones are its own (a scoped key tag).
    const removed = await this.#calls.control("delete", (c) =>
      c.eval(REMOVE, {
        keys: [keys.heads(target.cacheKey, target.scopeId), keys.tombs(target.cacheKey, target.scopeId)],
        arguments: [String(generation), target.modelId ?? "", String(TOMBSTONE_TTL_SECONDS)],
      }),
    );
    if (!removed.ok) return { ok: false, reason: failureReason(removed, "deleting") };
    const records = (Array.isArray(removed.value) ? removed.value : []).map(asText).filter((t): t is string => t !== null);
    for (const text of records) await this.#calls.unlinkDataOf(text);
    return { ok: true, removed: records.length };
  }

  async #removeAll(generation: number): Promise<RemoveOutcome> {
    const { keys, connections, settings } = this.#calls;
    const keep = new Set([keys.clock, keys.deletedAll]);
    // A walk over the whole key space: its own deadline, each command under the transfer one.
    const done = await this.#calls.guard.run("delete everything", Math.max(settings.transferTimeoutMs, 60_000), async (signal) => {
      await connections.ready();
      const c = connections.commands(signal, settings.transferTimeoutMs);
      // Recorded first: an upload ordered before it that publishes after this point sees it.
      await c.eval(RAISE_TO, { keys: [keys.deletedAll], arguments: [String(generation)] });
      let removed = 0;
      for await (const key of connections.scan(keys.everything)) {
        if (keep.has(key)) continue;
        await c.unlink(key);
        if (key.endsWith(":heads")) removed += 1;
      }
      return removed;
    });
    return done.ok ? { ok: true, removed: done.value } : { ok: false, reason: failureReason(done, "deleting everything") };
  }
}
