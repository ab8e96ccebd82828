/**
 * `kvkeep serve` keeps its store's normal background sweeps, and `/metrics` counts what they
 * evict (through `store.onEviction`). A real server process on a root that already holds
 * caches idle for two days: its first cached turn's commit starts a sweep that evicts them.
 */
import { randomBytes } from "node:crypto";
import { existsSync, mkdtempSync, rmSync, utimesSync } from "node:fs";
import { writeFile } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { generateConfigHash, openKvCacheStore } from "../../src/index.js";
import { manifestPathOf } from "../../src/layout/paths.js";
import { openaiClient, parsePrometheus, type ServeProcess, servedModel, startServe } from "./helpers.js";

const roots: string[] = [];
let server: ServeProcess | undefined;

afterAll(async () => {
  if (server) expect(await server.stop(), server.run.stderr()).toBe(0);
  for (const root of roots) rmSync(root, { recursive: true, force: true });
});

/** `count` committed auto caches under `root` (another app's, say), last used two days ago. */
async function plantIdleCaches(root: string, count: number): Promise<string[]> {
  const store = openKvCacheStore({ root });
  const session = store.createSession("planted-model");
  const configHash = generateConfigHash("planted");
  const paths: string[] = [];
  for (let i = 0; i < count; i++) {
    const history = [{ role: "user", content: `old question ${i}` }];
    const turn = await session.beginTurn({ kind: "auto", configHash, history, primeIfMissing: (p) => writeFile(p, randomBytes(256)) });
    await writeFile(turn.savePath, randomBytes(4096));
    const target = session.autoCachePath(configHash, [...history, { role: "assistant", content: `old answer ${i}` }]);
    await session.commitTurn(turn, { kind: "autoRename", targetCachePath: target, messageCount: 2 });
    paths.push(target);
  }
  await store.close();
  const twoDaysAgo = (Date.now() - 2 * 24 * 60 * 60 * 1000) / 1000;
  for (const cachePath of paths) utimesSync(manifestPathOf(cachePath), twoDaysAgo, twoDaysAgo); // a manifest's mtime is its last use
  return paths;
}

describe("evictions in kvkeep serve", () => {
  it("the store's background sweep after a commit evicts idle caches, and /metrics counts each one", async () => {
    const root = mkdtempSync(path.join(os.tmpdir(), "kvkeep-serve-evict-"));
    roots.push(root);
    const planted = await plantIdleCaches(root, 3);
    server = await startServe(["--root", root, "--parallel", "1", "--threads", "1", "--ctx", "1024"]);
    const scrape = async (): Promise<Map<string, number>> => parsePrometheus(await (await fetch(`${server!.url}/metrics`)).text());
    expect((await scrape()).get('kvkeep_evictions_total{reason="idle"}')).toBe(0);

    const client = openaiClient(server);
    const model = await servedModel(client);
    await client.chat.completions.create({ model, messages: [{ role: "user", content: "hello" }], max_tokens: 4, temperature: 0 });

    const deadline = Date.now() + 30_000;
    while ((await scrape()).get('kvkeep_evictions_total{reason="idle"}')! < 3) {
      if (Date.now() > deadline) throw new Error(`the idle caches were not evicted: ${server.run.stderr()}`);
      await new Promise((r) => setTimeout(r, 50));
    }
    const after = await scrape();
    expect(after.get('kvkeep_evictions_total{reason="idle"}')).toBe(3);
    expect(after.get('kvkeep_evictions_total{reason="budget"}')).toBe(0);
    expect(planted.some((p) => existsSync(p))).toBe(false);
    expect(after.get('kvkeep_store_bytes{kind="auto"}')).toBeGreaterThan(0); // the turn's own cache stays
  }, 120_000);
});
