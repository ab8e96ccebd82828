/** The benchmark chart of docs/benchmarks.md (bench/chart.ts): what it draws from a results file. */
import { describe, expect, it } from "vitest";
import { lineChartSvg, niceTicks, ttftChartSvg, ttftSeries, type TtftResults } from "../../bench/chart.js";

const results: TtftResults = {
  setup: "test <setup> & co",
  measuredAt: "2025-01-01",
  points: [
    { tokens: 2058, coldMs: 2400, resumedMs: 120, floorMs: 112 },
    { tokens: 535, coldMs: 520, resumedMs: 32, floorMs: 31 },
    { tokens: 3090, coldMs: 3900, resumedMs: 290, floorMs: 270, regenerateMs: null },
  ],
};

describe("TTFT chart", () => {
  it("axes start at 0 and end on a round value at or above the data", () => {
    expect(niceTicks(3900, 5)).toEqual([0, 1000, 2000, 3000, 4000]);
    expect(niceTicks(3090, 8)).toEqual([0, 500, 1000, 1500, 2000, 2500, 3000, 3500]);
    expect(niceTicks(0.7, 5)).toEqual([0, 0.2, 0.4, 0.6, 0.8]);
  });

  it("draws cold, resumed and floor; the regenerate slot stays out until it has points", () => {
    expect(ttftSeries(results).map((s) => s.name.split(":")[0])).toEqual(["cold", "resumed", "floor"]);
    const svg = ttftChartSvg(results);
    expect(svg.startsWith("<svg xmlns=\"http://www.w3.org/2000/svg\"")).toBe(true);
    expect(svg.trimEnd().endsWith("</svg>")).toBe(true);
    const lines = [...svg.matchAll(/<polyline [^>]*points="([^"]+)"/g)].map((m) => m[1]!.split(" "));
    expect(lines).toHaveLength(3);
    expect(lines.every((points) => points.length === 3)).toBe(true);
    // Points in token order: x grows along each line.
    for (const points of lines) {
      const xs = points.map((p) => Number(p.split(",")[0]));
      expect(xs).toEqual([...xs].sort((a, b) => a - b));
    }
    expect(svg).toContain("13× faster than cold"); // 3900 / 290 at the longest history
    expect(svg).toContain("resumed/floor 1.07");
    expect(svg).toContain("test &lt;setup&gt; &amp; co"); // text is escaped
    expect(svg).not.toContain("regenerate");

    const withRegenerate = ttftChartSvg({ ...results, points: results.points.map((p) => ({ ...p, regenerateMs: p.resumedMs * 1.5 })) });
    expect([...withRegenerate.matchAll(/<polyline /g)]).toHaveLength(4);
    expect(withRegenerate).toContain("regenerate: from the longest cached prefix");
  });

  it("a lower line is drawn after a higher one, so it is never hidden", () => {
    const svg = lineChartSvg({
      title: "t",
      subtitle: "s",
      xLabel: "x",
      yLabel: "y",
      series: [
        { name: "low", color: "#000001", points: [{ x: 1, y: 1 }] },
        { name: "high", color: "#000002", points: [{ x: 1, y: 9 }] },
      ],
    });
    expect(svg.indexOf('stroke="#000002" stroke-width="2.5" stroke-linejoin')).toBeLessThan(svg.indexOf('stroke="#000001" stroke-width="2.5" stroke-linejoin'));
  });
});
