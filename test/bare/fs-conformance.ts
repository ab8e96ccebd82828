/**
 * The Node fs calls kvkeep makes, exercised the way kvkeep makes them, with results reduced
 * to what must agree between runtimes. test/bare/shims.test.ts runs this module under Node
 * (real node:fs) and, bundled by scripts/build-bare.ts's builtin mapping, under Bare (the
 * shims of src/platform/bare/) — and compares.
 */
import { closeSync, constants, existsSync, fstatSync, mkdirSync, openSync, readFileSync, statSync, unlinkSync, writeSync } from "node:fs";
import { copyFile, link, lstat, lutimes, mkdir, open, readdir, readFile, rename, rm, rmdir, stat, symlink, unlink, utimes } from "node:fs/promises";
import { createHash, randomBytes } from "node:crypto";
import path from "node:path";

async function outcome(fn: () => unknown): Promise<string> {
  try {
    const value = await fn();
    return `ok${value === undefined ? "" : `:${typeof value === "string" ? value : JSON.stringify(value)}`}`;
  } catch (error) {
    return `error:${(error as { code?: string }).code ?? (error as Error).message}`;
  }
}

/** Identity of files another runtime made (read-only): must be byte-equal across runtimes. */
export async function identities(files: string[]): Promise<unknown> {
  const out: Record<string, unknown> = {};
  for (const file of files) {
    const st = await stat(file, { bigint: true });
    const lst = await lstat(file, { bigint: true });
    const handle = await open(file, constants.O_RDONLY | constants.O_NOFOLLOW);
    const fst = await handle.stat({ bigint: true });
    await handle.close();
    out[path.basename(file)] = {
      size: st.size.toString(),
      ino: st.ino.toString(),
      mtimeNs: st.mtimeNs.toString(),
      mtimeMs: st.mtimeMs.toString(),
      lstatIsLink: lst.isSymbolicLink(),
      fstatSame: fst.ino === st.ino && fst.mtimeNs === st.mtimeNs && fst.size === st.size,
      msStat: Math.floor(statSync(file).mtimeMs),
    };
  }
  return out;
}

/** Everything that mutates, in a fresh directory `dir` (results hold no inode or time). */
export async function behaviour(dir: string): Promise<Record<string, string>> {
  const r: Record<string, string> = {};
  const p = (name: string): string => path.join(dir, name);

  // mkdir recursive: the first directory created, then undefined when it exists.
  r.mkdirFirst = await outcome(async () => path.relative(dir, (await mkdir(p("a/b/c"), { recursive: true })) ?? "-"));
  r.mkdirAgain = await outcome(async () => (await mkdir(p("a/b/c"), { recursive: true })) ?? "none");
  r.mkdirPlainExists = await outcome(() => mkdir(p("a")));

  // Exclusive create: refused on an existing file, which keeps its content.
  const h = await open(p("x"), "wx", 0o644);
  await h.writeFile("first", "utf8");
  await h.sync();
  await h.close();
  r.wxExisting = await outcome(() => open(p("x"), "wx"));
  r.wxKeptContent = await outcome(() => readFile(p("x"), "utf8"));
  r.numericExcl = await outcome(() => open(p("x"), constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL, 0o644));

  // No-follow opens refuse a symlink; plain opens follow it.
  await symlink(p("x"), p("link"));
  r.nofollowOnLink = await outcome(() => open(p("link"), constants.O_RDONLY | constants.O_NOFOLLOW));
  r.appendNofollowOnLink = await outcome(() => open(p("link"), constants.O_WRONLY | constants.O_APPEND | constants.O_CREAT | constants.O_NOFOLLOW, 0o644));
  r.followRead = await outcome(() => readFile(p("link"), "utf8"));
  r.lstatLink = await outcome(async () => (await lstat(p("link"))).isSymbolicLink());

  // FileHandle: positional reads, read at the current position with null, writes of strings.
  const w = await open(p("data"), "w");
  await w.write("hello ");
  await w.write(Buffer.from("world"));
  await w.close();
  const rh = await open(p("data"), "r");
  const buf = Buffer.alloc(5);
  r.readAt = await outcome(async () => {
    const { bytesRead } = await rh.read(buf, 0, 5, 6);
    return `${bytesRead}:${buf.toString("utf8")}`;
  });
  r.readCurrent = await outcome(async () => {
    const { bytesRead } = await rh.read(buf, 0, 5, null);
    return `${bytesRead}:${buf.toString("utf8", 0, bytesRead)}`;
  });
  r.fstatSize = await outcome(async () => (await rh.stat()).size);
  await rh.close();
  const rest = await open(p("data"), "r");
  await rest.read(Buffer.alloc(6), 0, 6, null);
  r.handleReadFileRest = await outcome(() => rest.readFile("utf8"));
  await rest.close();

  // The safe-open flags kvkeep uses (no-follow, non-blocking, no controlling tty).
  const SAFE = constants.O_NOFOLLOW | constants.O_NONBLOCK | constants.O_NOCTTY;
  r.safeOpenFile = await outcome(async () => {
    const h = await open(p("data"), constants.O_RDONLY | SAFE);
    const isFile = (await h.stat()).isFile();
    await h.close();
    return isFile;
  });
  r.safeOpenDirIsFile = await outcome(async () => {
    const h = await open(dir, constants.O_RDONLY | SAFE);
    const isFile = (await h.stat()).isFile();
    await h.close();
    return isFile;
  });
  r.safeOpenLink = await outcome(() => open(p("link"), constants.O_RDONLY | SAFE));
  r.fstatSync = await outcome(() => {
    const fd = openSync(p("data"), constants.O_RDONLY | SAFE);
    try {
      const st = fstatSync(fd);
      return `${st.isFile()}:${st.size}`;
    } finally {
      closeSync(fd);
    }
  });
  // lutimes sets the link's own times, never its target's.
  r.lutimes = await outcome(async () => {
    const targetBefore = (await stat(p("x"), { bigint: true })).mtimeNs;
    await lutimes(p("link"), 1_600_000_000, 1_600_000_000);
    const linkMs = (await lstat(p("link"), { bigint: true })).mtimeMs.toString();
    return `${linkMs}:${(await stat(p("x"), { bigint: true })).mtimeNs === targetBefore}`;
  });

  // Sync calls: open flags as numbers, write strings, append.
  const fd = openSync(p("log"), constants.O_WRONLY | constants.O_APPEND | constants.O_CREAT | constants.O_NOFOLLOW, 0o644);
  writeSync(fd, "line 1\n");
  writeSync(fd, "line 2\n");
  closeSync(fd);
  r.appendSync = readFileSync(p("log"), "utf8");
  mkdirSync(p("s/t"), { recursive: true });
  r.existsSync = String(existsSync(p("s/t"))) + String(existsSync(p("nope")));
  unlinkSync(p("log"));
  r.unlinkSyncGone = String(existsSync(p("log")));

  // Directory entries with their types, sorted.
  r.readdirTypes = await outcome(async () =>
    (await readdir(dir, { withFileTypes: true }))
      .map((e) => `${e.name}:${e.isFile() ? "f" : e.isDirectory() ? "d" : e.isSymbolicLink() ? "l" : "?"}`)
      .sort()
      .join(","),
  );
  r.readdirNames = await outcome(async () => (await readdir(p("a"))).sort().join(","));

  // rename, link (EEXIST), copyFile exclusive, unlink, rmdir, rm, utimes.
  r.renameOver = await outcome(async () => {
    await rename(p("data"), p("x"));
    return readFile(p("x"), "utf8");
  });
  r.linkExisting = await outcome(() => link(p("x"), p("link")));
  r.copyExcl = await outcome(() => copyFile(p("x"), p("x"), constants.COPYFILE_EXCL));
  r.copyNew = await outcome(async () => {
    await copyFile(p("x"), p("copy"), constants.COPYFILE_EXCL | constants.COPYFILE_FICLONE);
    return readFile(p("copy"), "utf8");
  });
  r.unlinkMissing = await outcome(() => unlink(p("missing")));
  r.rmdirNotEmpty = await outcome(() => rmdir(p("a")));
  r.rmRecursive = await outcome(() => rm(p("a"), { recursive: true, force: true }));
  r.rmForceMissing = await outcome(() => rm(p("missing"), { force: true }));
  r.statMissing = await outcome(() => stat(p("missing")));
  r.utimes = await outcome(async () => {
    await utimes(p("x"), 1_700_000_000.5, 1_700_000_000.5);
    return (await stat(p("x"), { bigint: true })).mtimeNs.toString();
  });

  // crypto as kvkeep uses it.
  r.sha256 = createHash("sha256").update("kvkeep ✓", "utf8").digest("hex");
  r.random = String(randomBytes(4).toString("hex").length);
  return r;
}
