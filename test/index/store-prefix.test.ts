/**
 * Prefix reuse at the store, on real roots with real files (fake engine bytes): what
 * `findPrefix` answers, and that `borrowPrefix` lends a source read-only, held only while
 * it is loaded, never waiting, and never handing over anything but the verified state.
 */
import { promises as fs, readFileSync } from "node:fs";
import path from "node:path";
import { describe, expect, it, vi } from "vitest";
import { lockPathOf, manifestPathOf } from "../../src/layout/paths.js";
import type { CacheMessage, KvCacheSession } from "../../src/index.js";
import { messageKeyChain } from "../../src/keys/auto-key.js";
import { processLocks } from "../../src/locks/path-locks.js";
import { silentLogger } from "../../src/logger.js";
import { loadNativeFs } from "../../src/native/index.js";
import { INDEX_LOG_NAME } from "../../src/catalog/index-log.js";
import { resolveRetentionSettings, Retention, type RetentionInternals } from "../../src/retention/retention.js";
import { type ScannedModelDir, scanRoot } from "../../src/catalog/scan.js";
import { KvCacheStoreImpl } from "../../src/facade/kvkeep-store.js";
import { bundleFixture, runChild } from "../helpers/child.js";
import { tempDir } from "../helpers/temp-root.js";
import {
  assistant,
  commitAutoConversation,
  commitNamedConversation,
  configHash,
  conversation,
  isWholeState,
  MODEL,
  SYSTEM,
  user,
} from "./helpers.js";

/** A root holding one committed auto conversation (a closed store's work, as another process would leave it). */
async function rootWithConversation(): Promise<{ root: string; full: ReturnType<typeof conversation>; source: string }> {
  const root = tempDir();
  const writer = openStore(root);
  const full = conversation("a", 2);
  const source = await commitAutoConversation(writer.createSession(MODEL), full);
  await writer.close();
  return { root, full, source };
}

/** The next turn of the conversation `full` resumes from `source` with its whole count (not primed again), then rolls back. */
async function expectResumes(session: KvCacheSession, full: readonly CacheMessage[], source: string): Promise<void> {
  const turn = await session.beginTurn({
    kind: "auto",
    configHash,
    history: [...full, user("next")],
    primeIfMissing: async () => {
      throw new Error("the committed state must resume, not be removed and primed again");
    },
  });
  expect(turn).toMatchObject({ cachePath: source, savedCount: full.length });
  await session.rollback(turn);
}

function openStore(root: string, options: ConstructorParameters<typeof KvCacheStoreImpl>[0] = {}): KvCacheStoreImpl {
  return new KvCacheStoreImpl({ root, onRollback: "keep-committed", ...options });
}

async function snapshot(cachePath: string): Promise<{ bytes: Buffer; mtimeNs: bigint; manifest: string; manifestMtimeNs: bigint }> {
  const [bin, man] = await Promise.all([fs.stat(cachePath, { bigint: true }), fs.stat(manifestPathOf(cachePath), { bigint: true })]);
  return {
    bytes: await fs.readFile(cachePath),
    mtimeNs: bin.mtimeNs,
    manifest: await fs.readFile(manifestPathOf(cachePath), "utf8"),
    manifestMtimeNs: man.mtimeNs,
  };
}

describe("store.findPrefix", () => {
  it("finds the longer auto cache of a regenerate, an edit of the last message, and the system prompt of a new chat", async () => {
    const store = openStore(tempDir());
    const session = store.createSession(MODEL);
    const full = conversation("a", 3); // 7 messages
    const source = await commitAutoConversation(session, full);

    const regenerate = full.slice(0, -1);
    expect(await store.findPrefix({ modelId: MODEL, configHash, history: regenerate })).toMatchObject({
      cachePath: source,
      commonMessages: 6,
      messageCount: 7,
      kind: "auto",
    });
    const editLast = [...full.slice(0, 5), user("edited question")];
    expect((await store.findPrefix({ modelId: MODEL, configHash, history: editLast }))?.commonMessages).toBe(5);
    const newChat = [SYSTEM, user("something else entirely")];
    expect((await store.findPrefix({ modelId: MODEL, configHash, history: newChat }))?.commonMessages).toBe(1);
    await store.close();
  });

  it("indexes a named conversation committed with its history, and not one committed without it", async () => {
    const store = openStore(tempDir());
    const session = store.createSession(MODEL);
    const history = conversation("named", 2);
    const withHistory = await commitNamedConversation(session, "chat-1", history);
    await commitNamedConversation(session, "chat-2", conversation("other", 2), { passHistory: false });
    const fork = [...history, user("continue from here")];
    expect(await store.findPrefix({ modelId: MODEL, configHash, history: fork })).toMatchObject({
      cachePath: withHistory,
      cacheKey: "chat-1",
      kind: "named",
      commonMessages: 5,
    });
    expect(await store.findPrefix({ modelId: MODEL, configHash, history: [...conversation("other", 2), user("x")] })).toMatchObject({
      cachePath: withHistory, // only the shared system prompt: chat-2 is not indexed
      commonMessages: 1,
    });
    await store.close();
  });

  it("never answers with another model's, fingerprint's or config's cache, nor an excluded one", async () => {
    const store = openStore(tempDir());
    const full = conversation("a", 2);
    const source = await commitAutoConversation(store.createSession(MODEL, { fingerprint: "weights-1" }), full);
    const q = { modelId: MODEL, configHash, history: full.slice(0, -1) };
    expect(await store.findPrefix({ ...q, fingerprint: "weights-1" })).not.toBeNull();
    expect(await store.findPrefix({ ...q, fingerprint: "weights-2" })).toBeNull();
    expect(await store.findPrefix(q)).toBeNull();
    expect(await store.findPrefix({ ...q, fingerprint: "weights-1", modelId: "other-model" })).toBeNull();
    expect(await store.findPrefix({ ...q, fingerprint: "weights-1", configHash: "0123456789abcdef" })).toBeNull();
    expect(await store.findPrefix({ ...q, fingerprint: "weights-1", exclude: [source] })).toBeNull();
    await store.close();
  });

  it("answers after a restart from the manifests, and with another process's commits from the shared log", async () => {
    const root = tempDir();
    const first = openStore(root);
    const full = conversation("a", 2);
    const source = await commitAutoConversation(first.createSession(MODEL), full);
    await first.close();

    const restarted = openStore(root);
    expect((await restarted.findPrefix({ modelId: MODEL, configHash, history: full.slice(0, -1) }))?.cachePath).toBe(source);
    const resyncsBefore = restarted.retention.stats.resyncs;

    // A second store on the root (its own writer id and log position, like another process).
    const other = openStore(root);
    const theirs = await commitAutoConversation(other.createSession(MODEL), conversation("b", 3));
    await other.close(); // its log appends are flushed
    const found = await restarted.findPrefix({ modelId: MODEL, configHash, history: conversation("b", 3).slice(0, -1) });
    expect(found?.cachePath).toBe(theirs);
    expect(restarted.retention.stats.resyncs).toBe(resyncsBefore); // from the log, not a walk of the root
    await restarted.close();
  });

  it("rejects bad queries with INVALID_ARGUMENT naming the argument, touching nothing", async () => {
    const store = openStore(tempDir());
    const history = [SYSTEM];
    await expect(store.findPrefix({ modelId: "../x", configHash, history })).rejects.toMatchObject({ code: "KEY_HAS_SEPARATOR" });
    await expect(store.findPrefix({ modelId: MODEL, configHash: "bad hash!", history })).rejects.toMatchObject({ argument: "configHash" });
    await expect(store.findPrefix({ modelId: MODEL, configHash, history: "x" as never })).rejects.toMatchObject({ argument: "history" });
    await expect(store.findPrefix({ modelId: MODEL, configHash, history, minCommonMessages: 0 })).rejects.toMatchObject({
      argument: "minCommonMessages",
    });
    await expect(store.borrowPrefix({ modelId: MODEL, configHash, history }, "x" as never)).rejects.toMatchObject({ argument: "use" });
    await store.close();
  });
});

describe("a manifest's prefix chain is only a hint", () => {
  it("a malformed chain (too long, not hex keys, longer than the state's messages) leaves the cache trusted and resumable; it is only not borrowed", async () => {
    const keys = (n: number) => Array.from({ length: n }, (_, i) => i.toString(16).padStart(16, "0"));
    for (const chain of [keys(5000), keys(9), ["not a key"], "x"]) {
      const { root, full, source } = await rootWithConversation();
      // Another version of kvkeep, or someone else on the root, wrote a chain this one does not accept.
      const manifest = JSON.parse(await fs.readFile(manifestPathOf(source), "utf8"));
      manifest.current.chain = chain;
      await fs.writeFile(manifestPathOf(source), JSON.stringify(manifest));
      const store = openStore(root);
      expect(await store.borrowPrefix({ modelId: MODEL, configHash, history: full.slice(0, -1) }, async () => "lent")).toBeNull();
      const session = store.createSession(MODEL);
      await expectResumes(session, full, source);
      await store.close();
    }
  });
});

describe("store.borrowPrefix", () => {
  it("lends the verified state through a load path that reads the whole file, and changes nothing about the source", async () => {
    const store = openStore(tempDir());
    const session = store.createSession(MODEL);
    const full = conversation("a", 3);
    const source = await commitAutoConversation(session, full);
    const before = await snapshot(source);
    const lastUseBefore = store.retention.index.get(source)!.lastUsedMs;
    await new Promise((r) => setTimeout(r, 5));

    const lent = await store.borrowPrefix({ modelId: MODEL, configHash, history: full.slice(0, -1) }, async (src) => {
      expect(src).toMatchObject({ cachePath: source, commonMessages: 6, messageCount: 7 });
      return readFileSync(src.loadPath);
    });
    expect(lent?.value.equals(before.bytes)).toBe(true);
    expect(await snapshot(source)).toEqual(before); // bytes, mtime, manifest text and its mtime (last use)
    expect(store.retention.index.get(source)!.lastUsedMs).toBe(lastUseBefore); // no use recorded
    // The source's own conversation still resumes from it (count intact, not re-primed).
    await expectResumes(session, full, source);
    await store.close();
  });

  it("never waits for a source a turn holds: it lends the next candidate, or none", async () => {
    const store = openStore(tempDir());
    const session = store.createSession(MODEL);
    const full = conversation("a", 2);
    const longer = await commitAutoConversation(session, full);
    const shorter = await commitAutoConversation(session, full.slice(0, 3));
    const held = await session.beginTurn({ kind: "auto", configHash, history: [...full, user("go on")], primeIfMissing: async () => {} });
    expect(held.cachePath).toBe(longer);

    const q = { modelId: MODEL, configHash, history: [...full.slice(0, 4), user("edited")] };
    const lent = await store.borrowPrefix(q, async (src) => src.cachePath);
    expect(lent?.value).toBe(shorter);
    const onlyLonger = await store.borrowPrefix({ ...q, minCommonMessages: 4 }, async () => "lent");
    expect(onlyLonger).toBeNull();
    await session.rollback(held);
    await store.close();
  });

  it("skips a candidate whose lock cannot be taken (a planted symlink) and lends the next one", async () => {
    const store = openStore(tempDir());
    const session = store.createSession(MODEL);
    const full = conversation("a", 2);
    const longer = await commitAutoConversation(session, full);
    const shorter = await commitAutoConversation(session, full.slice(0, 3));
    // Another user of the shared root plants a symlink where the best source's lock file goes.
    await fs.rm(lockPathOf(longer), { force: true });
    await fs.symlink("/tmp/kvkeep-planted-elsewhere", lockPathOf(longer));
    const q = { modelId: MODEL, configHash, history: [...full.slice(0, 4), user("edited")] };
    const lent = await store.borrowPrefix(q, async (src) => src.cachePath);
    // (The JS fallback takes no lock files — it promises no cross-process safety — so it never opens the symlink.)
    expect(lent?.value).toBe(store.backend === "js-fallback" ? longer : shorter);
    expect((await fs.lstat(lockPathOf(longer))).isSymbolicLink()).toBe(true); // left as it was
    await store.close();
  });

  it("skips a source whose file no longer matches its manifest, without removing it", async () => {
    const root = tempDir();
    const store = openStore(root);
    const full = conversation("a", 2);
    const source = await commitAutoConversation(store.createSession(MODEL), full);
    await store.close();
    await fs.appendFile(source, "tampered"); // another size: matches no committed state
    const restarted = openStore(root);
    const lent = await restarted.borrowPrefix({ modelId: MODEL, configHash, history: full.slice(0, -1) }, async () => "lent");
    expect(lent).toBeNull();
    expect((await fs.stat(source)).isFile()).toBe(true); // not removed by a borrower
    await restarted.close();
  });

  it("drops a source removed outside kvkeep from the index when a borrow finds it gone, so later lookups answer the next one", async () => {
    const store = openStore(tempDir());
    const session = store.createSession(MODEL);
    const full = conversation("a", 2);
    const longer = await commitAutoConversation(session, full);
    const shorter = await commitAutoConversation(session, full.slice(0, 3));
    await fs.rm(path.dirname(path.dirname(longer)), { recursive: true }); // `rm -rf` of its key's directory
    const q = { modelId: MODEL, configHash, history: [...full.slice(0, 4), user("edited")] };
    expect((await store.findPrefix(q))?.cachePath).toBe(longer); // the index is a hint: it cannot know yet

    const lent = await store.borrowPrefix(q, async (src) => src.cachePath);
    expect(lent?.value).toBe(shorter);
    expect((await store.findPrefix(q))?.cachePath).toBe(shorter);
    expect(store.retention.index.get(longer)).toBeUndefined();
    await store.close();
  });

  it("does not promote a pending manifest slot (read-only), yet lends the state the slot describes", async () => {
    const root = tempDir();
    const store = openStore(root);
    const full = conversation("a", 2);
    const source = await commitAutoConversation(store.createSession(MODEL), full);
    await store.close();
    // A commit cut short after its rename: the manifest's pending slot describes the file.
    const manifest = JSON.parse(await fs.readFile(manifestPathOf(source), "utf8"));
    manifest.pending = manifest.current;
    manifest.current = { ...manifest.current, size: 1, ino: "1", mtimeNs: "1", xxh64: "0000000000000000" };
    const text = JSON.stringify(manifest);
    await fs.writeFile(manifestPathOf(source), text);

    const restarted = openStore(root);
    const lent = await restarted.borrowPrefix({ modelId: MODEL, configHash, history: full.slice(0, -1) }, async (src) =>
      isWholeState(readFileSync(src.loadPath)),
    );
    expect(lent?.value).toBe(true);
    expect(await fs.readFile(manifestPathOf(source), "utf8")).toBe(text);
    await restarted.close();
  });

  it("a delete while the source is being loaded cannot tear or change what is loaded", async () => {
    const store = openStore(tempDir());
    const full = conversation("a", 2);
    const source = await commitAutoConversation(store.createSession(MODEL), full, 256 * 1024);
    const expected = await fs.readFile(source);
    const key = source.split("/").at(-3)!;
    const lent = await store.borrowPrefix({ modelId: MODEL, configHash, history: full.slice(0, -1) }, async (src) => {
      await store.delete({ kvCacheKey: key }); // delete does not wait for holders
      await expect(fs.stat(source)).rejects.toMatchObject({ code: "ENOENT" });
      return readFileSync(src.loadPath);
    });
    expect(lent?.value.equals(expected)).toBe(true);
    expect(await store.findPrefix({ modelId: MODEL, configHash, history: full })).toBeNull();
    await store.close();
  });

  it("passes an error thrown by `use` through, and releases the source", async () => {
    const store = openStore(tempDir());
    const full = conversation("a", 2);
    const source = await commitAutoConversation(store.createSession(MODEL), full);
    const q = { modelId: MODEL, configHash, history: full.slice(0, -1) };
    await expect(store.borrowPrefix(q, async () => Promise.reject(new Error("engine failed")))).rejects.toThrow("engine failed");
    expect((await store.borrowPrefix(q, async (src) => src.cachePath))?.value).toBe(source);
    await store.close();
  });

  it("with exactAncestor, lends only a cache whose whole conversation the history continues", async () => {
    const store = openStore(tempDir());
    const session = store.createSession(MODEL);
    const full = conversation("a", 3);
    await commitAutoConversation(session, full); // longer than a regenerate's history
    const ancestor = await commitAutoConversation(session, full.slice(0, 3));
    const q = { modelId: MODEL, configHash, history: full.slice(0, -1), exactAncestor: true };
    expect((await store.borrowPrefix(q, async (src) => [src.cachePath, src.commonMessages]))?.value).toEqual([ancestor, 3]);
    await store.close();
  });

  it("an assistant message differing only in surrounding whitespace still matches (keys normalise replies)", async () => {
    const store = openStore(tempDir());
    const full = conversation("a", 2);
    const source = await commitAutoConversation(store.createSession(MODEL), full);
    const respaced = full.map((m) => (m.role === "assistant" ? assistant(`  ${m.content}\r\n`) : m));
    expect((await store.findPrefix({ modelId: MODEL, configHash, history: respaced }))?.cachePath).toBe(source);
    await store.close();
  });
});

describe("borrowing across processes", () => {
  it("two processes borrowing one source while a third deletes and evicts it are each lent a whole state or none — never a torn one", async () => {
    const root = tempDir();
    const worker = await bundleFixture("test/index/fixtures/borrow-worker.ts");
    const store = openStore(root);
    const session = store.createSession(MODEL);
    const full = conversation("src", 2);
    await commitAutoConversation(session, full, 512 * 1024);
    const children = [runChild(worker, [root, "300"]), runChild(worker, [root, "300"])];
    await Promise.all(children.map((c) => c.waitForLine((l) => l === "ready")));
    await new Promise((r) => setTimeout(r, 20)); // a first stretch with the source in place
    let finished = false;
    void Promise.all(children.map((c) => c.exited)).then(() => (finished = true));
    let deletes = 0;
    let sweeps = 0;
    const key = session.autoCachePath(configHash, full).split("/").at(-3)!;
    while (!finished) {
      // Recreate the source, then take it away by a delete or by an eviction.
      await commitAutoConversation(session, full, 512 * 1024).catch(() => {});
      await new Promise((r) => setTimeout(r, Math.random() * 3));
      if (Math.random() < 0.5) {
        await store.delete({ kvCacheKey: key });
        deletes++;
      } else {
        await store.sweep({ maxBytes: 0 });
        sweeps++;
      }
    }
    const totals = { whole: 0, none: 0, torn: 0 };
    for (const child of children) {
      expect(await child.exited, child.stderr()).toBe(0);
      const counts = JSON.parse(child.stdout().trim().split("\n").at(-1)!) as typeof totals;
      totals.whole += counts.whole;
      totals.none += counts.none;
      totals.torn += counts.torn;
    }
    console.log(`borrows: ${JSON.stringify(totals)} while ${deletes} deletes and ${sweeps} sweeps ran`);
    expect(totals.torn).toBe(0);
    expect(totals.whole + totals.none).toBe(600);
    expect(totals.whole).toBeGreaterThan(0);
    expect(deletes + sweeps).toBeGreaterThan(0);
    await store.close();
  }, 120_000);
});

describe("a store just opened", () => {
  it("does not read a huge (planted, sparse) index log whole for its open-time hint: it opens in a small heap and finds prefixes from its walk", async () => {
    const { root, source } = await rootWithConversation();
    // Someone sharing the root extends the log by a 300 MiB hole (no disk used, no newline in it).
    await fs.truncate(path.join(root, ".kvkeep", INDEX_LOG_NAME), 300 * 1024 * 1024);
    const run = runChild(await bundleFixture("test/index/fixtures/open-and-find.ts"), [root], { NODE_OPTIONS: "--max-old-space-size=64" });
    expect(await run.exited, run.stderr()).toBe(0);
    expect(JSON.parse(run.stdout().trim())).toEqual({ cachePath: source });
  }, 60_000);

  it("answers findPrefix from the shared log at once, without waiting for its walk of the root", async () => {
    const { root, full, source } = await rootWithConversation();

    let openWalk!: () => void;
    const walkPaused = new Promise<void>((resolve) => (openWalk = resolve));
    const store = new KvCacheStoreImpl({ root, retentionInternals: { beforeOpenWalk: () => walkPaused } });
    let ready = false;
    void store.ready.then(() => (ready = true));
    const found = await store.findPrefix({ modelId: MODEL, configHash, history: full.slice(0, -1) });
    expect(ready).toBe(false); // the walk has not even started
    expect(found?.cachePath).toBe(source);
    expect((await store.borrowPrefix({ modelId: MODEL, configHash, history: full.slice(0, -1) }, async (s) => s.cachePath))?.value).toBe(source);
    openWalk();
    await store.ready;
    expect((await store.findPrefix({ modelId: MODEL, configHash, history: full.slice(0, -1) }))?.cachePath).toBe(source);
    await store.close();
  });
});

/**
 * A store's retention over `root` whose walks of the root after the one at open wait at a
 * gate (a real walk of the root once opened), so a test can look prefixes up while one runs.
 */
async function gatedRetention(root: string, internals: RetentionInternals = {}) {
  let entered!: () => void;
  let open!: () => void;
  const walkEntered = new Promise<void>((resolve) => (entered = resolve));
  const gate = new Promise<void>((resolve) => (open = resolve));
  const walk = async (visit: (modelDir: ScannedModelDir) => Promise<void>): Promise<void> => {
    for await (const modelDir of scanRoot(root)) await visit(modelDir);
  };
  const retention = new Retention(
    {
      root,
      logger: silentLogger,
      fsBackend: loadNativeFs(),
      locks: processLocks(),
      forgetCache: () => {},
      prune: async () => {},
      walkRoot: async (visit) => {
        entered();
        await gate;
        await walk(visit);
      },
    },
    resolveRetentionSettings({}),
    internals,
  );
  await retention.buildAtOpen(walk);
  const lookup = async (history: ReturnType<typeof conversation>): Promise<string[]> =>
    (await retention.lookupPrefix({ scopeId: null, modelId: MODEL, fingerprint: null, configHash }, messageKeyChain(history))).map((c) => c.cachePath);
  return { retention, lookup, walkEntered, openGate: open };
}

/** `promise`'s value, or "waited" when it has not settled within a few seconds. */
function unlessItWaits<T>(promise: Promise<T>): Promise<T | "waited"> {
  return Promise.race([promise, new Promise<"waited">((resolve) => setTimeout(() => resolve("waited"), 5000))]);
}

describe("a prefix lookup (on every turn's path)", () => {
  it("answers from the index at once while a sweep's resync walks the root, instead of waiting for the walk", async () => {
    const { root, full, source } = await rootWithConversation();

    const { retention, lookup, walkEntered, openGate } = await gatedRetention(root, { resyncEverySweeps: 1 });
    const sweep = retention.sweep(); // every sweep resyncs: its walk waits at the gate
    await walkEntered;
    expect(await unlessItWaits(lookup(full.slice(0, -1)))).toEqual([source]);
    openGate();
    await sweep;
    await retention.close();
  });

  it("after another process compacted the shared log, answers without walking the root; the walk runs in the background and brings their caches in", async () => {
    const { root } = await rootWithConversation();
    const { retention, lookup, walkEntered, openGate } = await gatedRetention(root);

    // Another process commits, then compacts the log (a new file: what it held is unknowable to a reader).
    const other = openStore(root, { retentionInternals: { compactLogBytes: 1 } });
    const theirSession = other.createSession(MODEL);
    const theirs = await commitAutoConversation(theirSession, conversation("b", 2));
    for (let i = 0; i < 4; i++) {
      const gone = await commitAutoConversation(theirSession, conversation(`short-lived-${i}`, 1));
      await other.delete({ kvCacheKey: gone.split("/").at(-3)! });
    }
    await other.sweep();
    expect(other.retention.stats.compactions).toBeGreaterThan(0);
    await other.close();

    const history = conversation("b", 2).slice(0, -1);
    const answer = await unlessItWaits(lookup(history));
    expect(answer).not.toBe("waited"); // no walk on this path…
    expect(answer).not.toContain(theirs); // …so their commit is not known yet
    await walkEntered; // …the walk started in the background
    openGate();
    await vi.waitFor(async () => expect((await lookup(history))[0]).toBe(theirs));
    await retention.close();
  });
});
