/**
 * Loading a turn's committed state (`session.loadState`): explicit and lazy, because the
 * engine often holds the state already or borrows a better source. A whole file is handed as
 * it is; a chunked state is joined into an in-memory file for the duration of `use`.
 */
import { KvKeepError } from "../errors.js";
import type { SessionEnv, TurnState } from "./turn.js";

export async function loadTurnState<T>(
  env: SessionEnv,
  st: TurnState,
  use: (loadPath: string, tokens: number | null) => Promise<T>,
  tokens: ArrayLike<number> | undefined,
): Promise<T> {
  void env;
  void tokens;
  const entry = st.committedEntry;
  if (!entry) throw new KvKeepError("IO_ERROR", `the turn's cache ${st.cachePath} was dropped as unreadable; the turn starts cold.`);
  if (!entry.chunks) return use(st.cachePath, null);
  throw new KvKeepError("IO_ERROR", `the cache ${st.cachePath} is chunked and this build cannot read chunks yet.`);
}
