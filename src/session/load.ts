/**
 * Loading a turn's committed state (`session.loadState`): explicit and lazy, because the
 * engine often holds the state already or borrows a better source. A whole file is handed as
 * it is; a chunked state is joined into an in-memory file for the duration of `use` (only
 * what it shares with the prompt's tokens, when given). A chunked cache whose chunks are
 * missing or damaged is a miss: removed under the turn's lock, so the commit writes it anew.
 */
import { isKvKeepError, KvKeepError } from "../errors.js";
import { chunkedSource, MAX_TAIL_BYTES, withJoinedState } from "../store/chunked-load.js";
import type { SessionEnv, TurnState } from "./turn.js";

export async function loadTurnState<T>(
  env: SessionEnv,
  st: TurnState,
  use: (loadPath: string, tokens: number | null) => Promise<T>,
  tokens: ArrayLike<number> | undefined,
): Promise<T> {
  const { ctx, log } = env;
  const entry = st.committedEntry;
  if (!entry) {
    throw new KvKeepError("CHUNK_MISSING", `the turn's cache ${st.cachePath} was dropped as unreadable earlier in this turn; the turn starts cold.`);
  }
  if (!entry.chunks) return use(st.cachePath, null);
  let joined = false;
  try {
    // Under the turn's lock the file is the committed tail; its size says it still is.
    const read = await ctx.fsBackend.readFileBounded(st.cachePath, MAX_TAIL_BYTES);
    if (!read || read.identity.size !== entry.size) {
      throw new KvKeepError("CHUNK_CORRUPT", `the tail ${st.cachePath} is not the one its manifest names; the cache is a miss.`);
    }
    const source = chunkedSource(st.cachePath, entry.chunks, read.data);
    return await withJoinedState(ctx, source, tokens, (loadPath, count) => {
      joined = true;
      return use(loadPath, count);
    });
  } catch (error) {
    // Only kvkeep's own failures to assemble the state drop the cache; the engine's (in `use`) pass through.
    if (!joined && isKvKeepError(error) && (error.code === "CHUNK_MISSING" || error.code === "CHUNK_CORRUPT")) {
      log("warn", "a chunked cache could not be assembled; removing it (the turn starts cold, its commit stores the state anew)", {
        cachePath: st.cachePath,
        code: error.code,
        error,
      });
      await ctx.removeCache(st.cachePath).catch(() => {});
      st.committedEntry = null;
      st.beginIdentity = null;
    }
    throw error;
  }
}
