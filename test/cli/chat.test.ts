/**
 * `kvkeep chat`: the built CLI on the real node-llama-cpp engine and the generated tiny model,
 * on a real pseudo-terminal (pty.ts) and with piped stdin; and its pure parts (the typed
 * line, the cache line, the transcript file, a conversation's turns) in this process.
 *
 * The chats run with --threads 1: on this shared 2-core machine under load, llama.cpp's two
 * threads waiting on each other made the tiny model's tokens ~10× slower (measured: 100 tokens
 * in 27 s with 2 threads, 3.2 s with 1, at load 12).
 */
import { promises as fs } from "node:fs";
import { describe, expect, it } from "vitest";
import { type ChatEngine, Conversation, resolveSystemPrompt } from "../../src/cli/chat/conversation.js";
import { cacheLine, parseChatLine } from "../../src/cli/chat/format.js";
import { parseTranscript, serializeTranscript, type Transcript, transcriptId, transcriptPath } from "../../src/cli/chat/transcript.js";
import type { CompletionStats } from "../../src/engines/shared/stats.js";
import { KvKeepError } from "../../src/errors.js";
import { ensureModel, resolveShape } from "../fixtures/gguf/models.js";
import { tempDir } from "../helpers/temp-root.js";
import { bin, kvkeep } from "./helpers.js";
import { runOnPty } from "./pty.js";

const CACHE_LINE = String.raw`kvkeep: (\d+) of (\d+) prompt tokens? from cache · TTFT ([0-9.]+ m?s)`;

/** The `--json` events of a piped chat. */
function events(stdout: string): Array<Record<string, any>> {
  return stdout
    .trim()
    .split("\n")
    .map((l) => JSON.parse(l) as Record<string, any>);
}

describe("kvkeep chat on a terminal", () => {
  it("keeps a named session: a second run resumes it from the cache the first left, with its earlier turn restored", async () => {
    const model = await ensureModel(resolveShape("tiny"));
    const root = tempDir("kvkeep-chat-");
    const chat = [process.execPath, bin, "chat", "--model", model, "--session", "work", "--root", root, "--threads", "1", "--max-tokens", "8", "--system", "Be brief."];

    // First run: one turn, then /exit.
    const first = await runOnPty(chat, [
      { expect: 'a new conversation "work"' },
      { expect: "> ", send: "hello there\r" },
      { expect: String.raw`hello there\n([^\n]*)\n${CACHE_LINE}` },
      { expect: "> ", send: "/exit\r" },
    ]);
    expect(first.code).toBe(0);
    const [reply, firstReused, firstPrompt] = first.groups[2]!;
    expect(Number(firstReused)).toBe(0); // a new session: nothing cached yet
    expect(Number(firstPrompt)).toBeGreaterThan(0);

    // Second run, same session: the turn is restored, and the next turn starts from the cache.
    const second = await runOnPty(chat, [
      { expect: String.raw`resuming "work" with \S+: 1 previous turn` },
      { expect: 'last message: "hello there"' },
      { expect: "> ", send: "how are you\r" },
      { expect: CACHE_LINE },
      { expect: "> ", send: "/history\r" },
      { expect: String.raw`\[system\] Be brief\.\n> hello there\n([^\n]*)\n\n> how are you\n` },
      // Ctrl-C twice at the prompt quits.
      { expect: "> ", send: "\x03" },
      { expect: String.raw`\^C \(Ctrl-C again, Ctrl-D or /exit quits\)`, send: "\x03" },
    ]);
    expect(second.code).toBe(0);
    expect(second.groups[5]![0]).toBe(reply); // the earlier reply, as the first run showed it
    const resumedReused = Number(second.groups[3]![0]);
    const resumedPrompt = Number(second.groups[3]![1]);
    expect(resumedReused).toBeGreaterThan(0);

    // What the first turn left is what the same conversation reuses at its second turn when
    // it never stopped: one piped run of both messages in another root.
    const control = await kvkeep(["--json", "chat", "--model", model, "--session", "work", "--root", tempDir("kvkeep-chat-"), "--threads", "1", "--max-tokens", "8", "--system", "Be brief."], {
      input: "hello there\nhow are you\n",
    });
    expect(control.code).toBe(0);
    const turns = events(control.stdout).filter((e) => e.event === "turn");
    expect(turns[0]!.reply).toBe(reply);
    expect([resumedReused, resumedPrompt]).toEqual([turns[1]!.stats.reusedTokens, turns[1]!.stats.promptTokens]);
  }, 240_000);

  it("Ctrl-C stops a reply and keeps nothing of the turn; the chat goes on, and a Ctrl-C at the prompt right after quits", async () => {
    // The tiny model with its end-of-turn token pushed down never ends a reply by itself: a
    // reply runs until the context is full, so Ctrl-C always lands while it streams.
    const endless = await ensureModel("tiny", undefined, { eogBias: -30 });
    const root = tempDir("kvkeep-chat-");
    const run = await runOnPty(
      [process.execPath, bin, "chat", "--model", endless, "--session", "stop", "--root", root, "--threads", "1"],
      [
        { expect: "> ", send: "tell me everything\r" },
        { expect: String.raw`tell me everything\n\S`, send: "\x03" },
        { expect: "interrupted: the reply was dropped, the conversation goes on from the turn before" },
        { expect: "> ", send: "/history\r" },
        { expect: "no turns yet" },
        { expect: "> ", send: "and again\r" },
        { expect: String.raw`and again\n\S`, send: "\x03" },
        { expect: "interrupted" },
        { expect: "> ", send: "\x03" },
      ],
    );
    expect(run.code).toBe(0);
    expect(run.screen).not.toMatch(/prompt tokens? from cache/); // no turn completed
    await expect(fs.stat(transcriptPath(root, "stop", undefined))).rejects.toMatchObject({ code: "ENOENT" });
  }, 240_000);
});

describe("kvkeep chat without a terminal", () => {
  it("reads one message per line, prints each reply on stdout and its cache line on stderr, and keeps the transcript", async () => {
    const model = await ensureModel(resolveShape("tiny"));
    const root = tempDir("kvkeep-chat-");
    const run = await kvkeep(["chat", "--model", model, "--session", "notes", "--root", root, "--threads", "1", "--max-tokens", "6"], { input: "first message\n\n/nope\nsecond message\n" });
    expect(run.code).toBe(0);
    const lines = run.stderr.split("\n").filter((l) => l.startsWith("kvkeep: "));
    expect(lines).toHaveLength(2);
    expect(lines[0]).toMatch(/^kvkeep: 0 of \d+ prompt tokens from cache · TTFT [0-9.]+ m?s · \d+ evaluated, \d+ generated/);
    const [, reused] = /^kvkeep: (\d+) of/.exec(lines[1]!)!;
    expect(Number(reused)).toBeGreaterThan(0); // the second turn starts from the first's cache
    expect(run.stderr).toContain('unknown command "/nope": /help lists them');

    // The transcript, durably in <root>/.kvkeep/chat/, named by a hash (the session's name is not in clear).
    const file = transcriptPath(root, "notes", undefined);
    const kept = parseTranscript(await fs.readFile(file, "utf8"), file);
    expect(kept.messages.map((m) => m.role)).toEqual(["user", "assistant", "user", "assistant"]);
    expect([kept.messages[0]!.content, kept.messages[2]!.content]).toEqual(["first message", "second message"]);
    expect(run.stdout).toContain(kept.messages[1]!.content);
    expect(await fs.readdir(`${root}/.kvkeep/chat`)).not.toContain(expect.stringContaining("notes"));
  });

  it("with --json prints one event per line; /new forgets the conversation, its transcript and its cache", async () => {
    const model = await ensureModel(resolveShape("tiny"));
    const root = tempDir("kvkeep-chat-");
    const run = await kvkeep(["--json", "chat", "--model", model, "--session", "s", "--root", root, "--threads", "1", "--max-tokens", "4"], { input: "one\ntwo\n/new\nthree\n" });
    expect(run.code).toBe(0);
    const all = events(run.stdout);
    expect(all.map((e) => e.event)).toEqual(["start", "turn", "turn", "reset", "turn"]);
    expect(all[0]).toMatchObject({ session: "s", previousTurns: 0 });
    expect(all.map((e) => e.turn)).toEqual([undefined, 1, 2, undefined, 1]);
    expect(all[2]!.stats.reusedTokens).toBeGreaterThan(0);
    expect(all[4]!.stats).toMatchObject({ reusedTokens: 0, source: "none" }); // after /new: nothing cached
    const file = transcriptPath(root, "s", undefined);
    expect(parseTranscript(await fs.readFile(file, "utf8"), file).messages.map((m) => m.content)[0]).toBe("three");
  });

  it("SIGTERM during a reply stops it, keeps nothing of the turn and ends the chat (exit 143) with its lock released", async () => {
    const endless = await ensureModel("tiny", undefined, { eogBias: -30 });
    const root = tempDir("kvkeep-chat-");
    const { spawn } = await import("node:child_process");
    const child = spawn(process.execPath, [bin, "chat", "--model", endless, "--session", "term", "--root", root, "--threads", "1"], { stdio: ["pipe", "pipe", "pipe"] });
    let stderr = "";
    child.stderr.on("data", (d: Buffer) => (stderr += d.toString()));
    child.stdin.write("tell me everything\n"); // stdin stays open: the chat would wait for more
    const timer = setTimeout(() => child.kill("SIGKILL"), 120_000);
    const code = await new Promise<number | null>((resolve) => {
      child.stdout.once("data", () => child.kill("SIGTERM")); // the reply is streaming
      child.on("close", (c) => resolve(c));
    });
    clearTimeout(timer);
    expect(code).toBe(143);
    expect(stderr).toContain("interrupted: the reply was dropped");
    await expect(fs.stat(transcriptPath(root, "term", undefined))).rejects.toMatchObject({ code: "ENOENT" });
    // The session's lock went with the process: the session opens again.
    const again = await kvkeep(["--json", "chat", "--model", endless, "--session", "term", "--root", root, "--threads", "1"], { input: "" });
    expect(again.code).toBe(0);
    expect(events(again.stdout)[0]).toMatchObject({ event: "start", previousTurns: 0 });
  });

  it("refuses a second chat on a session that is open, before loading the model", async () => {
    const model = await ensureModel(resolveShape("tiny"));
    const root = tempDir("kvkeep-chat-");
    // The first chat waits for input on a pipe we keep open while the second one starts.
    const { spawn } = await import("node:child_process");
    const first = spawn(process.execPath, [bin, "chat", "--model", model, "--session", "busy", "--root", root], { stdio: ["pipe", "pipe", "pipe"] });
    try {
      await new Promise<void>((resolve, reject) => {
        let err = "";
        const timer = setTimeout(() => reject(new Error(`the first chat did not start: ${err}`)), 60_000);
        first.stderr.on("data", (d: Buffer) => {
          err += d.toString();
          if (err.includes('a new conversation "busy"')) {
            clearTimeout(timer);
            resolve();
          }
        });
      });
      const second = await kvkeep(["--json", "chat", "--model", model, "--session", "busy", "--root", root]);
      expect(second.code).toBe(1);
      expect(JSON.parse(second.stderr).error).toMatchObject({ code: "SESSION_IN_USE", exitCode: 1 });
    } finally {
      first.stdin.end();
      await new Promise((resolve) => first.on("close", resolve));
    }
  });
});

describe("kvkeep chat's usage errors", () => {
  it("says what is missing or mistyped (exit 2) and loads nothing; a model that is not there, or a transcript kvkeep did not write, exits 1", async () => {
    const missing = await kvkeep(["chat"]);
    expect([missing.code, missing.stderr]).toEqual([
      2,
      "kvkeep chat: --model is required: a GGUF model file, an hf: URI (hf:Qwen/Qwen3-0.6B-GGUF:Q8_0) or a URL. See kvkeep chat --help.\n",
    ]);
    const typo = await kvkeep(["chat", "--model", "m.gguf", "--sesion", "x"]);
    expect([typo.code, typo.stderr]).toEqual([2, "kvkeep chat: unknown option --sesion (did you mean --session?). See kvkeep chat --help.\n"]);
    expect((await kvkeep(["chta"])).stderr).toMatch(/^kvkeep: unknown command "chta" \(did you mean "chat"\?\)/);
    for (const bad of ["a/b", ".kvkeep", ""]) {
      const run = await kvkeep(["--json", "chat", "--model", "m.gguf", "--session", bad]);
      expect([run.code, JSON.parse(run.stderr).error.code], bad).toEqual([2, "USAGE"]);
    }
    expect((await kvkeep(["chat", "--model", "m.gguf", "--threads", "0"])).code).toBe(2);
    const absent = await kvkeep(["--json", "chat", "--model", "/nonexistent/m.gguf", "--root", tempDir("kvkeep-chat-")]);
    expect(absent.code).toBe(1);
    expect(JSON.parse(absent.stderr).error.code).toBe("START_FAILED");
    // A transcript kvkeep did not write — not JSON, or a symlink planted in its place — stops
    // the chat before the model loads, and is left as it is.
    const root = tempDir("kvkeep-chat-");
    const file = transcriptPath(root, "mine", undefined);
    await fs.mkdir(`${root}/.kvkeep/chat`, { recursive: true });
    await fs.writeFile(file, "not a transcript");
    const garbled = await kvkeep(["--json", "chat", "--model", "/nonexistent/m.gguf", "--session", "mine", "--root", root]);
    expect([garbled.code, JSON.parse(garbled.stderr).error.code]).toEqual([1, "TRANSCRIPT_UNREADABLE"]);
    expect(await fs.readFile(file, "utf8")).toBe("not a transcript");
    await fs.rm(file);
    await fs.writeFile(`${root}/elsewhere.json`, serializeTranscript({ system: null, messages: [] }));
    await fs.symlink(`${root}/elsewhere.json`, file);
    const linked = await kvkeep(["--json", "chat", "--model", "/nonexistent/m.gguf", "--session", "mine", "--root", root]);
    expect([linked.code, JSON.parse(linked.stderr).error.code]).toEqual([1, "TRANSCRIPT_UNREADABLE"]);
    expect((await fs.lstat(file)).isSymbolicLink()).toBe(true);

    const help = await kvkeep(["chat", "--help"]);
    expect(help.stdout).toMatch(/^Usage: kvkeep chat --model PATH\|hf:URI\|URL \[--session NAME\]/);
  });
});

describe("kvkeep chat's parts", () => {
  it("a typed line is a message, a command, or nothing; //text sends a message starting with /", () => {
    expect(parseChatLine("hello")).toEqual({ kind: "message", text: "hello" });
    expect(parseChatLine("hello\r")).toEqual({ kind: "message", text: "hello" });
    expect(parseChatLine("   ")).toEqual({ kind: "empty" });
    expect(parseChatLine("/new")).toEqual({ kind: "command", name: "new" });
    expect(parseChatLine(" /EXIT ".trim())).toEqual({ kind: "command", name: "exit" });
    expect(parseChatLine("/quit")).toEqual({ kind: "command", name: "exit" });
    expect(parseChatLine("/help me")).toEqual({ kind: "command", name: "help" });
    expect(parseChatLine("/nwe")).toEqual({ kind: "unknown-command", text: "/nwe" });
    expect(parseChatLine("//etc/hosts is a file")).toEqual({ kind: "message", text: "/etc/hosts is a file" });
  });

  it("the cache line says the prompt tokens from cache and the time to first token, then anything unusual", () => {
    const stats: CompletionStats = {
      hit: true,
      source: "own",
      layout: "chunked",
      sourceKey: "work",
      promptTokens: 77,
      reusedTokens: 45,
      evaluatedTokens: 32,
      completionTokens: 16,
      finishReason: "stop",
      ttftMs: 12.34,
      loadMs: 1,
      saveMs: 1,
      commitMs: 1,
      committed: true,
      commitFailure: null,
      refused: null,
    };
    expect(cacheLine(stats)).toBe("kvkeep: 45 of 77 prompt tokens from cache · TTFT 12.3 ms · 32 evaluated, 16 generated");
    expect(cacheLine({ ...stats, ttftMs: 1234, finishReason: "length", committed: false, commitFailure: "no-space" })).toBe(
      "kvkeep: 45 of 77 prompt tokens from cache · TTFT 1.23 s · 32 evaluated, 16 generated · this turn's state was not saved (no-space): the next turn re-reads it · the reply was cut at the token limit",
    );
    expect(cacheLine({ ...stats, source: "prefix", ttftMs: Number.NaN })).toContain("no token generated · 32 evaluated, 16 generated · started from another conversation's cache");
  });

  it("a transcript's file is named by a hash of scope and session, and a file that is not one is refused with what to do", () => {
    expect(transcriptId("work", undefined)).toMatch(/^[0-9a-f]{32}$/);
    expect(transcriptId("work", undefined)).not.toBe(transcriptId("work", "alice"));
    expect(transcriptId("work", undefined)).not.toBe(transcriptId("play", undefined));
    expect(transcriptPath("/r", "work", undefined)).toBe(`/r/.kvkeep/chat/${transcriptId("work", undefined)}.json`);
    const t: Transcript = { system: "Be brief.", messages: [{ role: "user", content: "hi" }, { role: "assistant", content: "hello" }] };
    expect(parseTranscript(serializeTranscript(t), "f")).toEqual(t);
    for (const bad of ["{", "{}", JSON.stringify({ kvkeep: "chat-transcript", format: 9, system: null, messages: [] }), serializeTranscript({ system: null, messages: [{ role: "user", content: "no reply" }] })]) {
      expect(() => parseTranscript(bad, "f"), bad).toThrowError(expect.objectContaining({ code: "TRANSCRIPT_UNREADABLE", message: expect.stringContaining("Move the file away") }));
    }
  });

  it("a turn that fails or is aborted keeps nothing; a kept turn is saved; /new forgets transcript and caches", async () => {
    const saved: Transcript[] = [];
    const done: string[] = [];
    let fail = false;
    const engine: ChatEngine = {
      async completion(params) {
        if (fail) throw new KvKeepError("ABORTED", "aborted");
        return { text: `reply to ${params.history.at(-1)!.content}`, stats: {} as CompletionStats };
      },
    };
    const conversation = new Conversation({
      engine,
      session: { name: "s", storage: { save: async (t) => void saved.push(t), remove: async () => void done.push("remove"), deleteCaches: async () => void done.push("caches") } },
      transcript: { system: "sys", messages: [] },
    });
    await conversation.send("one");
    expect(conversation.historyFor("two")).toEqual([
      { role: "system", content: "sys" },
      { role: "user", content: "one" },
      { role: "assistant", content: "reply to one" },
      { role: "user", content: "two" },
    ]);
    fail = true;
    await expect(conversation.send("two")).rejects.toThrow("aborted");
    expect(conversation.turns).toBe(1);
    expect(saved).toHaveLength(1);
    await conversation.reset();
    expect([conversation.turns, done]).toEqual([0, ["remove", "caches"]]);
    expect(resolveSystemPrompt(saved[0]!, undefined)).toEqual({ system: "sys", changed: false });
    expect(resolveSystemPrompt(saved[0]!, "other")).toEqual({ system: "other", changed: true });
    expect(resolveSystemPrompt(null, "new")).toEqual({ system: "new", changed: false });
  });
});
