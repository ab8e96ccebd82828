/**
 * The warm settings storage against hostile files planted where it keeps its files: a FIFO,
 * a symlink to /dev/zero, a 1.5 GiB sparse file, a FIFO instead of the directory. Each reads
 * as absent at once — never a hang, never a huge read — and a `set` replaces the file (or, for
 * a non-directory level, fails with UNSAFE_PATH). Run in a child process killed after a
 * timeout (a blocking open of a FIFO would hang the test run, exit included), on both the
 * native backend and the JS fallback.
 */
import { beforeAll, describe, expect, it } from "vitest";
import { bundleFixture, CHILD_BACKENDS, type ChildBackend, runChildScenario } from "../helpers/child.js";
import { tempDir } from "../helpers/temp-root.js";

const KILL_AFTER_MS = 30_000;
const VALUE = '{"enabled":false,"intervalMs":5000}';
let worker: string;

beforeAll(async () => {
  worker = await bundleFixture("test/warm/fixtures/settings-worker.ts");
});

function scenario(name: string, backend: ChildBackend): Promise<{ result: Record<string, unknown>; rssGrowthMiB: number }> {
  return runChildScenario(worker, [tempDir(), name], backend, KILL_AFTER_MS);
}

/** Read as absent, then replaced by a set: the file was never a setting. */
const replaced = { before: { get: null, has: false, keys: ["settings:other"] }, set: "ok", after: VALUE, other: "kept" };

describe.each(CHILD_BACKENDS)("hostile files where warm settings live (child process, kill timeout) [%s]", (backend) => {
  it("a FIFO as a settings file reads as absent at once, and a set replaces it", async () => {
    const { result } = await scenario("fifo-file", backend);
    expect(result).toMatchObject(replaced);
  }, KILL_AFTER_MS + 10_000);

  it("a symlink to /dev/zero as a settings file is never followed: absent, then replaced", async () => {
    const { result, rssGrowthMiB } = await scenario("devzero-file", backend);
    expect(result).toMatchObject(replaced);
    expect(rssGrowthMiB).toBeLessThan(200);
  }, KILL_AFTER_MS + 10_000);

  it("a 1.5 GiB sparse settings file is refused by its size, never read: absent, then replaced", async () => {
    const { result, rssGrowthMiB } = await scenario("sparse-file", backend);
    expect(result).toMatchObject(replaced);
    expect(rssGrowthMiB).toBeLessThan(200);
  }, KILL_AFTER_MS + 10_000);

  it("a FIFO instead of the settings directory: reads see nothing, a set is UNSAFE_PATH", async () => {
    const { result } = await scenario("fifo-dir", backend);
    expect(result).toMatchObject({ before: { get: null, has: false, keys: [] }, set: "UNSAFE_PATH", after: null, other: null });
  }, KILL_AFTER_MS + 10_000);
});
