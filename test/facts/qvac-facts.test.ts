/**
 * `npm run facts` only (never `npm test`: they pin the addon, not kvkeep; the cancel probe
 * also depends on timing). Facts about @qvac/llm-llamacpp 0.53.0 that kvkeep/qvac is built on (test/fixtures/QVAC-FACTS.md),
 * probed on the real addon under the real `bare` binary with no kvkeep involved. If one of
 * these changes with a new addon version, the adapter's design must be revisited.
 */
import { beforeAll, describe, expect, it } from "vitest";
import { ensureModel } from "../fixtures/gguf/models.js";
import { tempDir } from "../helpers/temp-root.js";
import { bareRuntimes, onBare } from "../bare/helpers.js";

let endless = "";

describe.each(bareRuntimes())("@qvac/llm-llamacpp 0.53.0 under Bare $version", (runtime) => {
  const { runBare } = onBare(runtime);
  const probe = (job: Record<string, unknown>): Promise<{ status: number | string; lines: Array<Record<string, unknown>>; stderr: string }> =>
    runBare("addon-probe.mjs", { model: endless, dir: tempDir(), ...job });

  beforeAll(async () => {
    // The end-of-turn token banned (as the fixture bans non-text bytes): replies run to the
    // token budget, so a cancel always lands first. With eogBias 0 it is an ordinary token,
    // and under load a reply could end on it before the cancel was processed.
    endless = await ensureModel("tiny", undefined, { eogBias: -30 });
  });

  it("takes load-time config values as strings only", async () => {
    const { lines } = await probe({ probe: "numeric-config" });
    expect(lines[0]).toMatchObject({ loaded: false });
    expect(String(lines[0]!.message)).toContain("Value is not string");
  });

  it("appends a run's messages to the loaded state; rewrites the previous key's file on a key switch, unless it is gone; reuses the same key from memory", async () => {
    const { status, lines } = await probe({ probe: "active-key" });
    expect(status).toBe(0);
    expect(lines[0]).toMatchObject({ appended: true, previousRewritten: true, goneRecreated: false, sameKeyFromMemory: true });
  });

  it("cancel: await() resolves, the state rolls back to before the request and is saved to the key", async () => {
    const { status, lines } = await probe({ probe: "cancel" });
    expect(status).toBe(0);
    const r = lines[0]!;
    expect(r.cancelledAt).toBe(3);
    expect(r.stopReason).toBe("none");
    expect(r.generatedTokens as number).toBeLessThan(2000);
    expect(r.cacheTokens).toBe(19); // the primed system prompt only
    expect(r.rewrittenBeforeAwaitResolved).toBe(true);
    expect(r.savedBytes).toBe(r.baseBytes);
  });

  it("a state file cut inside its header makes run reject; cut further in, it aborts the whole process", async () => {
    const header = await probe({ probe: "truncated", bytes: 8 });
    expect(header.status).toBe(0);
    expect(header.lines[1]).toMatchObject({ rejected: true });
    expect(String(header.lines[1]!.message)).toContain("failed to load session file");

    const body = await probe({ probe: "truncated", bytes: 1000 });
    expect(body.lines[0]).toMatchObject({ running: true });
    expect(body.lines).toHaveLength(1); // no result line: the process died in the load
    expect([134, "SIGABRT"]).toContain(body.status);
    expect(body.stderr).toContain("GGML_ASSERT");
  });
});
