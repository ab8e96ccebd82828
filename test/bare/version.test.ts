/** Which Bare versions the Bare build accepts (src/platform/bare/version.ts; pure, run under Node). */
import { describe, expect, it } from "vitest";
import { isKvKeepError } from "../../src/errors.js";
import { assertSupportedBare, MIN_BARE_VERSION, unsupportedBareReason } from "../../src/platform/bare/version.js";

describe("the Bare version floor", () => {
  it("is the oldest Bare the tests run on, 1.31.0", () => {
    expect(MIN_BARE_VERSION).toBe("1.31.0");
  });

  it("accepts the floor and anything newer, with or without the v", () => {
    for (const v of ["v1.31.0", "1.31.0", "v1.31.2", "v1.33.4", "v1.40.0", "v2.0.0", "v1.31.0-beta.1"]) expect(unsupportedBareReason(v), v).toBeNull();
  });

  it("refuses older versions and versions it cannot read, with RUNTIME_UNSUPPORTED", () => {
    for (const v of ["v1.30.2", "v1.28.5", "v0.9.9", "1.31", "", undefined, 131]) {
      expect(unsupportedBareReason(v), String(v)).not.toBeNull();
      let thrown: unknown;
      try {
        assertSupportedBare(v);
      } catch (error) {
        thrown = error;
      }
      expect(isKvKeepError(thrown, "RUNTIME_UNSUPPORTED"), String(v)).toBe(true);
    }
  });
});
