/** The progress line of `kvkeep verify` (and the width both it and `kvkeep serve`'s start status use). */
import { describe, expect, it } from "vitest";
import { progressBar, progressLine, terminalColumns } from "../../src/cli/progress.js";

const TiB = 1024 ** 4;

describe("the progress line", () => {
  it("fits an 80-column terminal whole, with the largest counts and sizes", () => {
    const line = progressLine("verifying", 1000 * 1024 ** 3, 99999, 1000 * 1024 ** 3, 99999, 80);
    expect(line.length).toBeLessThanOrEqual(79);
    expect(line).toMatch(/^verifying \[█+\] 100% {2}99999\/99999, 1000 GiB of 1000 GiB$/);
  });

  it("on narrower terminals shrinks the bar first, then drops the byte counts; the percentage and counts stay", () => {
    const at = (columns: number) => progressLine("verifying", TiB / 2, 12345, TiB, 12345, columns);
    expect(at(120)).toBe(`verifying [${"█".repeat(12)}${"·".repeat(12)}]  50%  12345/12345, 512 GiB of 1 TiB`);
    expect(at(60)).toBe(`verifying [${"█".repeat(6)}${"·".repeat(5)}]  50%  12345/12345, 512 GiB of 1 TiB`);
    expect(at(40)).toBe(`verifying [${"█".repeat(5)}${"·".repeat(4)}]  50%  12345/12345`);
    for (const columns of [120, 80, 60, 40, 30, 20, 10]) expect(at(columns).length, String(columns)).toBeLessThanOrEqual(columns - 1);
  });

  it("takes the width from the terminal, else $COLUMNS, else 80: a terminal without a size reports 0 columns", () => {
    expect(terminalColumns({ columns: 100 }, { COLUMNS: "120" })).toBe(100);
    expect(terminalColumns({ columns: 0 }, { COLUMNS: "120" })).toBe(120);
    expect(terminalColumns({ columns: 0 }, {})).toBe(80);
    expect(terminalColumns({}, { COLUMNS: "x" })).toBe(80);
  });

  it("draws nothing on a pipe, and erases itself at the end on a terminal", () => {
    let piped = "";
    const onPipe = progressBar({ write: (t: string) => (piped += t), isTTY: false }, { label: "verifying", totalBytes: 10, totalItems: 1, enabled: true });
    onPipe.update(10, 1);
    onPipe.finish();
    expect(piped).toBe("");
    let screen = "";
    const onTerminal = progressBar({ write: (t: string) => (screen += t), isTTY: true, columns: 0 }, { label: "verifying", totalBytes: 10, totalItems: 1, enabled: true });
    onTerminal.update(10, 1);
    onTerminal.finish();
    expect(screen).toMatch(/^\rverifying \[█+\] 100% {2}1\/1, 10 B of 10 B\x1b\[K\r\x1b\[K$/);
  });
});
