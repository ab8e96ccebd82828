/** The CLI's units, typed flag values and human formats (pure). */
import { describe, expect, it } from "vitest";
import { CliError } from "../../src/cli/errors.js";
import { budgetBar, formatAge, formatBytes, plural, renderTable } from "../../src/cli/format.js";
import { integerOption, listOption, requiredText, sizeOption, textOption } from "../../src/cli/option-values.js";
import { parseDuration, parseSize, parseWholeNumber } from "../../src/cli/units.js";
import { closestName } from "../../src/suggest.js";

describe("sizes and durations on the command line", () => {
  it("sizes take K, M, G, T (powers of 1024), with or without B/iB, or plain bytes", () => {
    expect(parseSize("512K")).toBe(512 * 1024);
    expect(parseSize("5M")).toBe(5 * 1024 ** 2);
    expect(parseSize("2G")).toBe(2 * 1024 ** 3);
    expect(parseSize("1.5g")).toBe(1.5 * 1024 ** 3);
    expect(parseSize("2GiB")).toBe(2 * 1024 ** 3);
    expect(parseSize("100MB")).toBe(100 * 1024 ** 2);
    expect(parseSize("1048576")).toBe(1048576);
    expect(parseSize("0")).toBe(0);
    for (const bad of ["lots", "", "-1M", "5X", "1e9", "5 M B"]) expect(parseSize(bad), bad).toBeUndefined();
  });

  it("durations take ms, s, m, h, d, w and sums like 1h30m; a bare number other than 0 is refused", () => {
    expect(parseDuration("30s")).toBe(30_000);
    expect(parseDuration("15m")).toBe(900_000);
    expect(parseDuration("1h")).toBe(3_600_000);
    expect(parseDuration("7d")).toBe(7 * 86_400_000);
    expect(parseDuration("2w")).toBe(14 * 86_400_000);
    expect(parseDuration("500ms")).toBe(500);
    expect(parseDuration("1h30m")).toBe(5_400_000);
    expect(parseDuration("0")).toBe(0);
    for (const bad of ["30", "1x", "h", "", "-1h", "1 h"]) expect(parseDuration(bad), bad).toBeUndefined();
  });
});

describe("typed flag values, every command's (a USAGE error names the flag and the form it wants)", () => {
  const usage = (fn: () => unknown): string => {
    try {
      fn();
    } catch (error) {
      expect(error).toBeInstanceOf(CliError);
      expect((error as CliError).code).toBe("USAGE");
      return (error as Error).message;
    }
    throw new Error("expected a usage error");
  };

  it("whole numbers are digits only, then checked against the flag's range", () => {
    expect(["8080", "0", "007", " 12 "].map(parseWholeNumber)).toEqual([8080, 0, 7, 12]);
    for (const bad of ["", "-1", "+1", "2.5", "1e3", "0x10", "8k"]) expect(parseWholeNumber(bad), bad).toBeUndefined();
    expect(integerOption({ port: "80" }, "port", { min: 0, max: 65535 })).toBe(80);
    expect(integerOption({}, "port", { min: 0, max: 65535 })).toBeUndefined();
    expect(usage(() => integerOption({ port: "http" }, "port", { min: 0, max: 65535 }))).toBe('--port must be a whole number (got "http").');
    expect(usage(() => integerOption({ port: "70000" }, "port", { min: 0, max: 65535 }))).toBe("--port must be between 0 and 65535 (got 70000).");
  });

  it("text may be required or merely non-empty; a repeated flag is a list; a size is a size", () => {
    expect(usage(() => requiredText({ model: "" }, "model", "a GGUF file"))).toBe("--model is required: a GGUF file.");
    expect(usage(() => textOption({ host: "" }, "host"))).toBe("--host must not be empty.");
    expect(textOption({}, "host")).toBeUndefined();
    expect(listOption({}, "api-key")).toEqual([]);
    expect(usage(() => listOption({ "api-key": ["a", ""] }, "api-key"))).toBe("--api-key must not be empty.");
    expect(sizeOption({ "max-bytes": "2G" }, "max-bytes")).toBe(2 * 1024 ** 3);
    expect(usage(() => sizeOption({ "max-bytes": "99999999T" }, "max-bytes"))).toBe('--max-bytes must be a size such as 512K, 5M, 2G or a number of bytes (got "99999999T").');
  });
});

describe("human output", () => {
  it("sizes in the unit that reads best, never 0.00 MiB", () => {
    expect(formatBytes(0)).toBe("0 B");
    expect(formatBytes(1000)).toBe("1000 B");
    expect(formatBytes(1536)).toBe("1.5 KiB");
    expect(formatBytes(12.34 * 1024 ** 2)).toBe("12.3 MiB");
    expect(formatBytes(512 * 1024 ** 2)).toBe("512 MiB");
    expect(formatBytes(4 * 1024 ** 3)).toBe("4 GiB");
    expect(formatBytes(1024 ** 2 - 1)).toBe("1 MiB"); // rounds up to the next unit, not "1024 KiB"
  });

  it("ages read as 'N unit ago'", () => {
    expect(formatAge(300)).toBe("just now");
    expect(formatAge(42_000)).toBe("42 s ago");
    expect(formatAge(3 * 60_000 + 5)).toBe("3 min ago");
    expect(formatAge(3 * 3_600_000)).toBe("3 h ago");
    expect(formatAge(12 * 86_400_000)).toBe("12 d ago");
    expect(formatAge(-3_600_000)).toBe("in the future");
  });

  it("singular and plural", () => {
    expect(plural(1, "cache")).toBe("1 cache");
    expect(plural(0, "cache")).toBe("0 caches");
    expect(plural(2, "key")).toBe("2 keys");
  });

  it("tables align columns, numbers to the right, with no trailing spaces", () => {
    expect(renderTable([{ header: "KEY" }, { header: "SIZE", align: "right" }, { header: "NOTE" }], [["a", "1 B", ""], ["long-key", "12.3 MiB", "x"]])).toEqual([
      "KEY           SIZE  NOTE",
      "a              1 B",
      "long-key  12.3 MiB  x",
    ]);
  });

  it("the budget bar scales auto and named caches to the budget (or to the total when over it)", () => {
    const [half] = budgetBar({ autoBytes: 512, namedBytes: 0 }, 1024, 10);
    expect(half).toMatch(/^\[█{5}·{5}\] 512 B on disk, budget 1 KiB$/);
    const [over] = budgetBar({ autoBytes: 3000, namedBytes: 1000 }, 1000, 8);
    expect(over).toMatch(/^\[█{6}▒{2}\]/);
    const [tiny] = budgetBar({ autoBytes: 1, namedBytes: 1 }, 1024 ** 3, 10);
    expect(tiny).toMatch(/^\[█▒·{8}\]/); // something on disk always shows
  });
});

describe("did you mean", () => {
  it("suggests the closest name for a typo, and nothing for an unrelated word", () => {
    const options = ["root", "logger", "onRollback", "verify", "maxBytes", "maxIdleMs", "sweepIntervalMs", "evictNamed"];
    expect(closestName("maxByte", options)).toBe("maxBytes");
    expect(closestName("maxbytes", options)).toBe("maxBytes");
    expect(closestName("onRollbak", options)).toBe("onRollback");
    expect(closestName("evictnamed", options)).toBe("evictNamed");
    expect(closestName("remote", options)).toBeUndefined();
    expect(closestName("--modle", ["--model", "--all"])).toBe("--model");
  });
});
