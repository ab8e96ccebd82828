/**
 * The benchmark chart of docs/benchmarks.md: time to first token against history length, one line per
 * way of starting a turn, drawn as a self-contained SVG (no charting dependency).
 *
 *   npx tsx bench/chart.ts [bench/results/engine-ttft.json] [docs/bench-ttft.svg]
 *
 * re-draws the chart from the results `bench/engine.ts` writes (so a series can be added to
 * the JSON — e.g. `regenerateMs` once prefix reuse lands — and drawn without a re-run).
 */
import { readFileSync, writeFileSync } from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";

export interface TtftPoint {
  /** Prompt tokens of the measured turn (the history, rendered). */
  tokens: number;
  coldMs: number;
  resumedMs: number;
  floorMs: number;
  /** Regenerating the last reply from a prefix cache: filled in once prefix reuse lands. */
  regenerateMs?: number | null;
}

export interface TtftResults {
  /** e.g. "realistic model (512-dim, 8 layers), 2 threads, 7 repeats, medians" */
  setup: string;
  measuredAt: string;
  points: TtftPoint[];
}

export interface Series {
  name: string;
  color: string;
  dashed?: boolean;
  points: Array<{ x: number; y: number }>;
}

/** The lines of the TTFT chart, in legend order. A series with no points is left out. */
export const TTFT_SERIES: ReadonlyArray<{ key: keyof Omit<TtftPoint, "tokens">; name: string; color: string; dashed?: boolean }> = [
  { key: "coldMs", name: "cold: the whole history evaluated", color: "#d1495b" },
  { key: "regenerateMs", name: "regenerate: from the longest cached prefix", color: "#3a7ca5" },
  { key: "resumedMs", name: "resumed: kvkeep loads the saved state", color: "#2a9d3f" },
  { key: "floorMs", name: "floor: the engine alone, same state and tokens", color: "#6c757d", dashed: true },
];

export function ttftSeries(results: TtftResults): Series[] {
  return TTFT_SERIES.map((s) => ({
    name: s.name,
    color: s.color,
    ...(s.dashed ? { dashed: true } : {}),
    points: results.points.flatMap((p) => {
      const y = p[s.key];
      return typeof y === "number" ? [{ x: p.tokens, y }] : [];
    }),
  })).filter((s) => s.points.length > 0);
}

/** 0 and round steps (1, 2, 2.5 or 5 × 10^n) up to at least `max`, about `count` of them. */
export function niceTicks(max: number, count = 5): number[] {
  if (!(max > 0)) return [0, 1];
  const raw = max / count;
  const power = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 2.5, 5, 10].map((m) => m * power).find((s) => s >= raw)!;
  const ticks: number[] = [];
  for (let v = 0; v < max + step * 1e-9; v += step) ticks.push(Number(v.toPrecision(12)));
  if (ticks[ticks.length - 1]! < max) ticks.push(Number((ticks[ticks.length - 1]! + step).toPrecision(12)));
  return ticks;
}

const escape = (text: string): string => text.replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;");

function formatMs(ms: number): string {
  return ms >= 1000 ? `${(ms / 1000).toFixed(ms >= 10_000 ? 0 : 1)} s` : `${Math.round(ms)} ms`;
}

export interface ChartOptions {
  title: string;
  subtitle: string;
  xLabel: string;
  yLabel: string;
  series: Series[];
  /** A note under the last point of a series (e.g. a ratio), by series name. */
  endLabels?: Record<string, string>;
  width?: number;
  height?: number;
}

/** A line chart as a standalone SVG document: axes from 0, grid, points, legend, end labels. */
export function lineChartSvg(options: ChartOptions): string {
  const width = options.width ?? 760;
  const height = options.height ?? 440;
  const legendRows = Math.ceil(options.series.length / 2);
  const margin = { left: 72, right: 150, top: 78 + legendRows * 18, bottom: 56 };
  const plotW = width - margin.left - margin.right;
  const plotH = height - margin.top - margin.bottom;
  const all = options.series.flatMap((s) => s.points);
  const xTicks = niceTicks(Math.max(...all.map((p) => p.x), 1), 8);
  const yTicks = niceTicks(Math.max(...all.map((p) => p.y), 1), 5);
  const xMax = xTicks[xTicks.length - 1]!;
  const yMax = yTicks[yTicks.length - 1]!;
  const sx = (x: number): number => margin.left + (x / xMax) * plotW;
  const sy = (y: number): number => margin.top + plotH - (y / yMax) * plotH;
  const r = (n: number): string => n.toFixed(1);
  const out: string[] = [];
  out.push(
    `<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" viewBox="0 0 ${width} ${height}" font-family="system-ui, -apple-system, 'Segoe UI', Helvetica, Arial, sans-serif">`,
    `<rect width="${width}" height="${height}" fill="#ffffff"/>`,
    `<text x="${margin.left}" y="28" font-size="18" font-weight="600" fill="#212529">${escape(options.title)}</text>`,
    `<text x="${margin.left}" y="48" font-size="12" fill="#6c757d">${escape(options.subtitle)}</text>`,
  );
  for (const y of yTicks) {
    out.push(
      `<line x1="${margin.left}" y1="${r(sy(y))}" x2="${margin.left + plotW}" y2="${r(sy(y))}" stroke="${y === 0 ? "#adb5bd" : "#e9ecef"}" stroke-width="1"/>`,
      `<text x="${margin.left - 8}" y="${r(sy(y) + 4)}" font-size="11" fill="#495057" text-anchor="end">${escape(formatMs(y))}</text>`,
    );
  }
  for (const x of xTicks) {
    out.push(
      `<line x1="${r(sx(x))}" y1="${margin.top + plotH}" x2="${r(sx(x))}" y2="${margin.top + plotH + 5}" stroke="#adb5bd"/>`,
      `<text x="${r(sx(x))}" y="${margin.top + plotH + 19}" font-size="11" fill="#495057" text-anchor="middle">${x}</text>`,
    );
  }
  out.push(
    `<line x1="${margin.left}" y1="${margin.top}" x2="${margin.left}" y2="${margin.top + plotH}" stroke="#adb5bd"/>`,
    `<text x="${margin.left + plotW / 2}" y="${height - 14}" font-size="12" fill="#212529" text-anchor="middle">${escape(options.xLabel)}</text>`,
    `<text transform="translate(18 ${margin.top + plotH / 2}) rotate(-90)" font-size="12" fill="#212529" text-anchor="middle">${escape(options.yLabel)}</text>`,
  );
  // Draw the lower lines last, so a line near the axis is never hidden under another.
  const byHeight = [...options.series].sort((a, b) => Math.max(...b.points.map((p) => p.y)) - Math.max(...a.points.map((p) => p.y)));
  for (const s of byHeight) {
    const points = [...s.points].sort((a, b) => a.x - b.x);
    out.push(
      `<polyline fill="none" stroke="${s.color}" stroke-width="2.5" stroke-linejoin="round"${s.dashed ? ' stroke-dasharray="6 4"' : ""} points="${points.map((p) => `${r(sx(p.x))},${r(sy(p.y))}`).join(" ")}"/>`,
      ...points.map((p) => `<circle cx="${r(sx(p.x))}" cy="${r(sy(p.y))}" r="3.5" fill="${s.color}"><title>${escape(`${s.name}: ${p.x} tokens, ${formatMs(p.y)}`)}</title></circle>`),
    );
  }
  // End labels: the last point's value (and a note), right of the plot, nudged apart.
  const ends = options.series
    .map((s) => {
      const last = [...s.points].sort((a, b) => a.x - b.x).pop()!;
      return { s, last, y: sy(last.y) };
    })
    .sort((a, b) => a.y - b.y);
  const gap = (e: (typeof ends)[number]): number => (options.endLabels?.[e.s.name] ? 30 : 16);
  for (let i = 1; i < ends.length; i++) ends[i]!.y = Math.max(ends[i]!.y, ends[i - 1]!.y + gap(ends[i - 1]!));
  // Pushed below the axis: move the stack up, keeping the gaps.
  const overflow = ends.length > 0 ? ends[ends.length - 1]!.y + gap(ends[ends.length - 1]!) - 12 - (margin.top + plotH) : 0;
  if (overflow > 0) {
    ends[ends.length - 1]!.y -= overflow;
    for (let i = ends.length - 2; i >= 0; i--) ends[i]!.y = Math.min(ends[i]!.y, ends[i + 1]!.y - gap(ends[i]!));
  }
  for (const e of ends) {
    const note = options.endLabels?.[e.s.name];
    out.push(
      `<text x="${margin.left + plotW + 10}" y="${r(e.y + 4)}" font-size="12" font-weight="600" fill="${e.s.color}">${escape(formatMs(e.last.y))}</text>`,
      ...(note ? [`<text x="${margin.left + plotW + 10}" y="${r(e.y + 18)}" font-size="11" fill="${e.s.color}">${escape(note)}</text>`] : []),
    );
  }
  // Legend between the subtitle and the plot, two columns: it never covers a line.
  const columnWidth = (width - margin.left - 20) / 2;
  options.series.forEach((s, i) => {
    const x = margin.left + (i % 2) * columnWidth;
    const y = 64 + Math.floor(i / 2) * 18;
    out.push(
      `<line x1="${r(x)}" y1="${y}" x2="${r(x + 22)}" y2="${y}" stroke="${s.color}" stroke-width="2.5"${s.dashed ? ' stroke-dasharray="6 4"' : ""}/>`,
      `<text x="${r(x + 30)}" y="${y + 4}" font-size="12" fill="#212529">${escape(s.name)}</text>`,
    );
  });
  out.push("</svg>");
  return `${out.join("\n")}\n`;
}

/** The chart of docs/benchmarks.md from a results file. */
export function ttftChartSvg(results: TtftResults): string {
  const last = [...results.points].sort((a, b) => a.tokens - b.tokens).pop();
  const endLabels: Record<string, string> = {};
  if (last) {
    endLabels[TTFT_SERIES[2]!.name] = `${(last.coldMs / last.resumedMs).toFixed(0)}× faster than cold`;
    endLabels[TTFT_SERIES[3]!.name] = `resumed/floor ${(last.resumedMs / last.floorMs).toFixed(2)}`;
  }
  return lineChartSvg({
    title: "Time to first token of the next turn",
    subtitle: `${results.setup} — measured ${results.measuredAt}`,
    xLabel: "history (prompt tokens)",
    yLabel: "time to first token",
    series: ttftSeries(results),
    endLabels,
  });
}

export const DEFAULT_RESULTS = "bench/results/engine-ttft.json";
export const DEFAULT_SVG = "docs/bench-ttft.svg";

if (process.argv[1] && path.resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  const [input = DEFAULT_RESULTS, output = DEFAULT_SVG] = process.argv.slice(2);
  writeFileSync(output, ttftChartSvg(JSON.parse(readFileSync(input, "utf8")) as TtftResults));
  console.log(`wrote ${output}`);
}
