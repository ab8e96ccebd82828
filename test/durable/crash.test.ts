/**
 * The durability guarantee, tested by killing real writers: a child process commits
 * turns in a loop (fake engine, random-size states through savePath) and is SIGKILLed —
 * at random instants, and at every named step of the commit protocol. After each kill a
 * fresh store must find every cache at its last committed state or newer: never torn,
 * never missing once committed, never with a count from another state, and never hand
 * out a file whose checksum is wrong.
 */
import { existsSync, promises as fs, readFileSync } from "node:fs";
import path from "node:path";
import { beforeAll, describe, expect, it } from "vitest";
import { generateConfigHash } from "../../src/index.js";
import { CRASH_POINTS } from "../../src/durable/crash-points.js";
import { createXxh64 } from "../../src/keys/hash.js";
import { verifyCache } from "../../src/manifest/store.js";
import { loadNativeFs } from "../../src/native/index.js";
import { KvCacheStoreImpl } from "../../src/facade/kvkeep-store.js";
import { bundleFixture, runChild } from "../helpers/child.js";
import { listTree } from "../helpers/fake-engine.js";
import { tempDir } from "../helpers/temp-root.js";
import {
  autoTurnHistory,
  CRASH_CONFIG,
  CRASH_FINGERPRINT,
  CRASH_KEYS,
  CRASH_MODEL,
  parseStateHeader,
} from "./fixtures/crash-shared.js";

const RANDOM_KILLS = Number(process.env.KVKEEP_CRASH_KILLS ?? 200);
const configHash = generateConfigHash(CRASH_CONFIG);
let writer: string;

beforeAll(async () => {
  writer = await bundleFixture("test/durable/fixtures/crash-writer.ts");
});

interface Journal {
  lastByKey: Map<string, { seq: number; count: number }>;
  lastAuto: { seq: number; count: number; index: number } | null;
  commits: number;
}

function readJournal(file: string): Journal {
  const journal: Journal = { lastByKey: new Map(), lastAuto: null, commits: 0 };
  if (!existsSync(file)) return journal;
  for (const line of readFileSync(file, "utf8").split("\n")) {
    if (!line) continue;
    const [key, seq, count, index] = line.split(" ") as [string, string, string, string?];
    journal.commits++;
    if (key === "auto") journal.lastAuto = { seq: Number(seq), count: Number(count), index: Number(index) };
    else journal.lastByKey.set(key, { seq: Number(seq), count: Number(count) });
  }
  return journal;
}

function xxh64Of(bytes: Buffer): string {
  const h = createXxh64();
  h.update(bytes);
  return h.digestHex();
}

/** Open a fresh store on `root` and check every cache against the journal. */
async function checkAfterKill(root: string, journalPath: string, context: string): Promise<void> {
  const journal = readJournal(journalPath);
  const store = new KvCacheStoreImpl({ root, onRollback: "keep-committed", verify: "checksum" });
  await store.ready;
  const tree = await listTree(root);
  expect(tree.filter((f) => f.endsWith(".tmp")), `${context}: temp files survived recovery`).toEqual([]);
  const session = store.createSession(CRASH_MODEL, { fingerprint: CRASH_FINGERPRINT });

  for (const key of CRASH_KEYS) {
    const committed = journal.lastByKey.get(key);
    let primed = false;
    const turn = await session.beginTurn({
      kind: "custom",
      customKey: key,
      configHash,
      primeIfMissing: async (p) => {
        primed = true;
        await fs.writeFile(p, `${JSON.stringify({ key: "checker", seq: 0, count: 0 })}\nprimed by checker`);
      },
    });
    try {
      if (committed) expect(primed, `${context}: ${key} was committed (seq ${committed.seq}) but is missing`).toBe(false);
      if (!primed) {
        const bytes = await fs.readFile(turn.cachePath);
        const header = parseStateHeader(bytes);
        if (header.key !== "checker") {
          expect(header.key, context).toBe(key);
          if (committed) expect(header.seq, `${context}: ${key} went back to an older state`).toBeGreaterThanOrEqual(committed.seq);
        }
        expect(turn.savedCount, `${context}: ${key} count belongs to another state`).toBe(header.count);
        const manifest = JSON.parse(await fs.readFile(turn.cachePath.replace(/\.bin$/, ".meta.json"), "utf8"));
        expect(manifest.current.xxh64, `${context}: ${key} handed out with a wrong checksum`).toBe(xxh64Of(bytes));
      }
    } finally {
      await session.rollback(turn);
    }
  }

  if (journal.lastAuto) {
    const { index, seq } = journal.lastAuto;
    // The state of exchange `index` lives at its key until the next exchange's commit moves it on.
    const candidates = [index, index + 1].map((i) => session.autoCachePath(configHash, autoTurnHistory(i + 1).slice(0, -1)));
    const found = [];
    for (const cachePath of candidates) {
      const location = path.relative(root, cachePath).split(path.sep);
      const verdict = await verifyCache(
        loadNativeFs(),
        cachePath,
        { modelId: CRASH_MODEL, fingerprint: CRASH_FINGERPRINT, configHash, cacheKey: location[0]! },
        { checksum: true },
      );
      if (verdict.ok) {
        const header = parseStateHeader(await fs.readFile(cachePath));
        expect(header.key, context).toBe("auto");
        expect(header.seq, `${context}: auto conversation went back`).toBeGreaterThanOrEqual(seq);
        expect(verdict.entry.messageCount, `${context}: auto count belongs to another state`).toBe(header.count);
        found.push(cachePath);
      } else if (!verdict.missing) {
        // A fresh target cut between its file and manifest renames: the state being
        // committed, lost by design. It is never trusted (beginTurn uses this same check).
        expect(verdict.reason, `${context}: unexpected untrusted auto cache`).toBe("cache file has no manifest");
      }
    }
    expect(found.length, `${context}: the auto conversation's committed state is missing`).toBeGreaterThan(0);
  }
  await store.close();
}

describe("crash safety of commits", () => {
  it(`a writer SIGKILLed at ${RANDOM_KILLS} random instants never leaves a torn, lost or mixed cache`, async () => {
    // Two independent roots, one writer each, so both cores kill and check at once.
    const lanes = 2;
    let totalCommits = 0;
    await Promise.all(
      Array.from({ length: lanes }, async (_, lane) => {
        const root = tempDir();
        const journal = path.join(tempDir(), "journal");
        for (let kill = lane; kill < RANDOM_KILLS; kill += lanes) {
          const run = runChild(writer, [root, journal]);
          await run.waitForLine((l) => l === "committing");
          await new Promise((r) => setTimeout(r, Math.floor(Math.random() * 120)));
          run.child.kill("SIGKILL");
          expect(await run.exited).toBe("SIGKILL");
          await checkAfterKill(root, journal, `lane ${lane} kill ${kill}`);
        }
        totalCommits += readJournal(journal).commits;
      }),
    );
    // The writers really worked between kills (not just started and died).
    expect(totalCommits).toBeGreaterThan(RANDOM_KILLS);
  }, 600_000);

  const steps = CRASH_POINTS.flatMap((step) =>
    (step.startsWith("auto:") ? [1, 2] : [1, 2, 4, 7]).map((nth) => `${step}@${nth}`),
  );

  it.each(steps)("a writer killed at %s leaves every cache at its last committed state or the new one", async (crashAt) => {
    const root = tempDir();
    const journal = path.join(tempDir(), "journal");
    // A first run commits some history, so the crash hits commits that have a previous state.
    const warmup = runChild(writer, [root, journal, "9"]);
    expect(await warmup.exited, warmup.stderr()).toBe(0);
    await checkAfterKill(root, journal, `${crashAt} after warm-up`);
    const run = runChild(writer, [root, journal, "40"], { KVKEEP_TEST_CRASH_AT: crashAt });
    expect(await run.exited, `the writer never reached ${crashAt}: ${run.stderr()}`).toBe("SIGKILL");
    await checkAfterKill(root, journal, crashAt);
    // And the writer carries on from there.
    const after = runChild(writer, [root, journal, "6"]);
    expect(await after.exited, after.stderr()).toBe(0);
    await checkAfterKill(root, journal, `${crashAt} then 6 more turns`);
  });
});
