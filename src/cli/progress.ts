/**
 * A progress bar on stderr for long work, redrawn in place at most every 100 ms. Only on a
 * terminal and never with --json: `progressBar` returns a no-op otherwise, so piped output
 * and logs stay clean.
 */
import { formatBytes } from "./format.js";
import type { CliOutput } from "./io.js";

export interface Progress {
  /** `done` of `total` bytes after `items` items. */
  update(done: number, items: number): void;
  /** Erase the bar (the caller prints its summary line after). */
  finish(): void;
}

const NONE: Progress = { update: () => {}, finish: () => {} };

export function progressBar(stream: CliOutput, options: { label: string; totalBytes: number; totalItems: number; enabled: boolean }): Progress {
  if (!options.enabled || !stream.isTTY) return NONE;
  const { label, totalBytes, totalItems } = options;
  let lastDraw = 0;
  let drawn = false;
  const draw = (done: number, items: number): void => {
    const width = 24;
    const fraction = totalBytes > 0 ? Math.min(1, done / totalBytes) : totalItems > 0 ? items / totalItems : 1;
    const filled = Math.round(fraction * width);
    const text = `${label} [${"█".repeat(filled)}${"·".repeat(width - filled)}] ${String(Math.floor(fraction * 100)).padStart(3)}%  ${items}/${totalItems}, ${formatBytes(done)} of ${formatBytes(totalBytes)}`;
    const columns = stream.columns ?? 80;
    stream.write(`\r${text.slice(0, columns - 1)}\x1b[K`);
    drawn = true;
  };
  return {
    update(done, items) {
      const now = Date.now();
      if (now - lastDraw < 100 && items < totalItems) return;
      lastDraw = now;
      draw(done, items);
    },
    finish() {
      if (drawn) stream.write("\r\x1b[K");
    },
  };
}
