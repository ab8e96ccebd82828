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

/**
 * The terminal's width: the stream's own, else $COLUMNS, else 80. A pseudo-terminal
 * created without a size (`script`, some container shells) reports 0 columns, and a line
 * cut to "0 - 1" characters lost its end.
 */
export function terminalColumns(stream: { readonly columns?: number | undefined }, env: NodeJS.ProcessEnv = process.env): number {
  if (stream.columns !== undefined && stream.columns > 0) return stream.columns;
  const fromEnv = Number(env.COLUMNS);
  return Number.isInteger(fromEnv) && fromEnv > 0 ? fromEnv : 80;
}

/**
 * The progress line for `columns`: the bar shrinks (24 down to 8 cells) before anything is
 * dropped, then the byte counts go, and only then is the line cut. Pure.
 */
export function progressLine(label: string, done: number, items: number, totalBytes: number, totalItems: number, columns: number): string {
  const fraction = totalBytes > 0 ? Math.min(1, done / totalBytes) : totalItems > 0 ? items / totalItems : 1;
  const pct = `${String(Math.floor(fraction * 100)).padStart(3)}%`;
  const counts = `${items}/${totalItems}`;
  const bytes = `, ${formatBytes(done)} of ${formatBytes(totalBytes)}`;
  const room = columns - 1; // the last column would wrap on some terminals
  const bar = (width: number): string => {
    const filled = Math.round(fraction * width);
    return `[${"█".repeat(filled)}${"·".repeat(width - filled)}]`;
  };
  for (const tail of [`${counts}${bytes}`, counts]) {
    const fixed = `${label}  ${pct}  ${tail}`.length + 2; // the bar's brackets
    const width = Math.min(24, room - fixed);
    if (width >= 8) return `${label} ${bar(width)} ${pct}  ${tail}`;
  }
  return `${label} ${pct}  ${counts}`.slice(0, Math.max(0, room));
}

export function progressBar(stream: CliOutput, options: { label: string; totalBytes: number; totalItems: number; enabled: boolean }): Progress {
  if (!options.enabled || !stream.isTTY) return NONE;
  const { label, totalBytes, totalItems } = options;
  let lastDraw = 0;
  let drawn = false;
  const draw = (done: number, items: number): void => {
    stream.write(`\r${progressLine(label, done, items, totalBytes, totalItems, terminalColumns(stream))}\x1b[K`);
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
