/** Opening a store for a command that changes the root (gc, rm), with its warnings collected. */
import type { Logger } from "../logger.js";
import { type KvCacheStoreOptions, KvCacheStoreImpl } from "../store/store.js";
import type { CommandContext } from "./command.js";

export interface CliStore {
  store: KvCacheStoreImpl;
  /** Warnings and errors the store logged (printed on stderr as they come, unless --json). */
  warnings: string[];
}

export async function openCliStore(ctx: CommandContext, options: Omit<KvCacheStoreOptions, "root" | "logger"> = {}): Promise<CliStore> {
  const warnings: string[] = [];
  const record = (line: string): void => {
    warnings.push(line);
    ctx.note(line);
  };
  const logger: Logger = { debug: () => {}, info: () => {}, warn: record, error: record };
  const store = new KvCacheStoreImpl({ root: ctx.root, logger, ...options });
  await store.ready;
  return { store, warnings };
}
