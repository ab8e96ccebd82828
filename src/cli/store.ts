/** Opening a store for a command that changes the root (gc, rm), with its warnings collected. */
import type { Logger } from "../logger.js";
import { type KvCacheStoreOptions, KvCacheStoreImpl } from "../facade/kvkeep-store.js";
import type { CommandContext } from "./command.js";

export interface CliStore {
  store: KvCacheStoreImpl;
  /** Warnings and errors the store logged (printed on stderr as they come, unless --json). */
  warnings: string[];
  /** Files the store's recovery at open removed (dead writers' temps, manifests of vanished caches). */
  recoveredFiles: number;
}

export async function openCliStore(ctx: CommandContext, options: Omit<KvCacheStoreOptions, "root" | "logger" | "adopt"> = {}): Promise<CliStore> {
  const warnings: string[] = [];
  const record = (line: string): void => {
    warnings.push(line);
    ctx.note(line);
  };
  const logger: Logger = { debug: () => {}, info: () => {}, warn: record, error: record };
  // The command checked the root (assertKvkeepRoot): --adopt marks a foreign one here.
  const store = new KvCacheStoreImpl({ root: ctx.root, logger, adopt: ctx.options.adopt === true, ...options });
  const recovered = await store.ready;
  return { store, warnings, recoveredFiles: recovered.removedTemps + recovered.removedManifests };
}
