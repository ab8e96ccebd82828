/** Timing helpers for benchmarks: ratios from one run, medians of interleaved repeats. */

export function nowMs(): number {
  return Number(process.hrtime.bigint()) / 1e6;
}

export function median(values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  const mid = Math.floor(sorted.length / 2);
  return sorted.length % 2 ? sorted[mid]! : (sorted[mid - 1]! + sorted[mid]!) / 2;
}

/**
 * Run each variant `repeats` times, interleaved (A B A B …) so machine noise hits both
 * alike, and return the median milliseconds of each.
 */
export async function compare<K extends string>(
  repeats: number,
  variants: Record<K, () => Promise<void>>,
): Promise<Record<K, number>> {
  const samples = Object.fromEntries(Object.keys(variants).map((k) => [k, [] as number[]])) as unknown as Record<K, number[]>;
  for (let i = 0; i < repeats; i++) {
    for (const [name, fn] of Object.entries(variants) as Array<[K, () => Promise<void>]>) {
      const start = nowMs();
      await fn();
      samples[name].push(nowMs() - start);
    }
  }
  return Object.fromEntries(Object.entries(samples).map(([k, v]) => [k, median(v as number[])])) as Record<K, number>;
}

export function table(rows: Array<Record<string, string | number>>): string {
  const cols = Object.keys(rows[0] ?? {});
  const cell = (v: string | number) => (typeof v === "number" ? (Number.isInteger(v) ? String(v) : v.toFixed(2)) : v);
  const widths = cols.map((c) => Math.max(c.length, ...rows.map((r) => cell(r[c]!).length)));
  const line = (vals: string[]) => vals.map((v, i) => v.padStart(widths[i]!)).join("  ");
  return [line(cols), line(widths.map((w) => "-".repeat(w))), ...rows.map((r) => line(cols.map((c) => cell(r[c]!))))].join("\n");
}
