/**
 * The Redis tier's defaults (pure: no client import), so code that must not load `redis`
 * — the CLI before `--remote` is given — can name them too.
 */
export const DEFAULT_CHUNK_BYTES = 1024 * 1024;
export const DEFAULT_TTL_SECONDS = 7 * 24 * 3600;
export const DEFAULT_TIMEOUT_MS = 200;
export const DEFAULT_TRANSFER_TIMEOUT_MS = 10_000;
