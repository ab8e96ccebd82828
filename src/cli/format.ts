/** Human output: sizes, ages, plurals, aligned tables, bars (pure). */

const BYTE_UNITS = ["KiB", "MiB", "GiB", "TiB", "PiB"];

/** `1000 B`, `1.5 KiB`, `12.3 MiB`, `512 MiB`, `4 GiB`: three significant digits at most. */
export function formatBytes(bytes: number): string {
  if (bytes < 1024) return `${bytes} B`;
  let value = bytes;
  let unit = -1;
  while (value >= 1024 && unit < BYTE_UNITS.length - 1) {
    value /= 1024;
    unit++;
  }
  const digits = value >= 100 ? 0 : value >= 10 ? 1 : 2;
  // Round first: 1023.99 KiB must not print as "1024 KiB".
  const rounded = Number(value.toFixed(digits));
  if (rounded >= 1024 && unit < BYTE_UNITS.length - 1) return `1 ${BYTE_UNITS[unit + 1]}`;
  return `${String(rounded)} ${BYTE_UNITS[unit]}`;
}

/** `just now`, `42 s ago`, `3 min ago`, `5 h ago`, `12 d ago`; `in the future` for a clock ahead of ours. */
export function formatAge(ms: number): string {
  if (ms < -60_000) return "in the future";
  if (ms < 1000) return "just now";
  const s = Math.floor(ms / 1000);
  if (s < 60) return `${s} s ago`;
  const min = Math.floor(s / 60);
  if (min < 60) return `${min} min ago`;
  const h = Math.floor(min / 60);
  if (h < 48) return `${h} h ago`;
  return `${Math.floor(h / 24)} d ago`;
}

/** `850 ms`, `3.4 s`, `2 min 5 s`. */
export function formatElapsed(ms: number): string {
  if (ms < 1000) return `${Math.round(ms)} ms`;
  if (ms < 60_000) return `${(ms / 1000).toFixed(1)} s`;
  const s = Math.round(ms / 1000);
  return `${Math.floor(s / 60)} min ${s % 60} s`;
}

/** `1 cache`, `2 caches`, `0 caches`. */
export function plural(count: number, singular: string, pluralForm = `${singular}s`): string {
  return `${count} ${count === 1 ? singular : pluralForm}`;
}

/**
 * Characters a terminal acts on instead of showing, or that reorder or break lines: C0
 * controls (ESC starts escape sequences, CR and LF fake rows), DEL, C1 controls (0x9B is a
 * CSI on many terminals), the Unicode line and paragraph separators, and the bidirectional
 * overrides and isolates.
 */
const CONTROL = /[\u0000-\u001f\u007f-\u009f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069]/g;

/**
 * `text` safe to print on a terminal: each control character (see CONTROL) as a visible
 * escape, `\x1b` or `\u202e`. Session names are chosen by clients (`kv_cache`, `X-KV-Cache`),
 * so a name must never move the cursor, clear the screen or add a row to a table.
 */
export function escapeControls(text: string): string {
  return text.replace(CONTROL, (c) => {
    const code = c.charCodeAt(0);
    return code <= 0xff ? `\\x${code.toString(16).padStart(2, "0")}` : `\\u${code.toString(16).padStart(4, "0")}`;
  });
}

export interface Column {
  header: string;
  align?: "left" | "right";
}

/**
 * Rows under a header, columns padded to their widest cell, two spaces apart, no trailing
 * spaces. Cells are printed with their control characters escaped (escapeControls).
 */
export function renderTable(columns: readonly Column[], rawRows: ReadonlyArray<readonly string[]>): string[] {
  const rows = rawRows.map((r) => r.map(escapeControls));
  const widths = columns.map((c, i) => Math.max(c.header.length, ...rows.map((r) => (r[i] ?? "").length)));
  const line = (cells: readonly string[]): string =>
    columns
      .map((c, i) => {
        const cell = cells[i] ?? "";
        return c.align === "right" ? cell.padStart(widths[i]!) : cell.padEnd(widths[i]!);
      })
      .join("  ")
      .trimEnd();
  return [line(columns.map((c) => c.header)), ...rows.map(line)];
}

/**
 * The budget bar `kvkeep scan` draws on a terminal: auto caches (█), named caches (▒),
 * free budget (·), `width` cells for max(budget, total), and a legend line.
 */
export function budgetBar(usage: { autoBytes: number; namedBytes: number }, budgetBytes: number, width = 40): string[] {
  const total = usage.autoBytes + usage.namedBytes;
  const scale = Math.max(budgetBytes, total, 1);
  const cells = (bytes: number): number => (bytes <= 0 ? 0 : Math.max(1, Math.round((bytes / scale) * width)));
  const auto = Math.min(width, cells(usage.autoBytes));
  const named = Math.min(width - auto, cells(usage.namedBytes));
  const free = width - auto - named;
  const pct = budgetBytes > 0 ? Math.round((usage.autoBytes / budgetBytes) * 100) : 0;
  return [
    `[${"█".repeat(auto)}${"▒".repeat(named)}${"·".repeat(free)}] ${formatBytes(total)} on disk, budget ${formatBytes(budgetBytes)}`,
    ` █ auto ${formatBytes(usage.autoBytes)} (${pct}% of the budget, evictable)   ▒ named ${formatBytes(usage.namedBytes)} (kept unless --evict-named)`,
  ];
}
