/**
 * The in-memory handoff on the real engine: node-llama-cpp 3.22.1 takes only paths, and
 * kvkeep hands it `/proc/self/fd/<fd>` of a memfd (MemoryFile). llama.cpp opens the path with
 * fopen ("wb" to save, which truncates; "rb" to load), a new open file description on the
 * same memory, so kvkeep's descriptor stays open and its bytes are the state.
 */
import { mkdtempSync, readFileSync, readSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { LlamaContext, LlamaContextSequence, LlamaModel, Token } from "node-llama-cpp";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { joinSeqStateParts, splitSeqState } from "../../src/chunks/state-format.js";
import { loadNativeFs } from "../../src/native/index.js";
import type { MemoryFile } from "../../src/native/types.js";
import { createContext, greedyGenerate, loadFixtureModel } from "../fixtures/engine.js";

const skip = process.env.KVKEEP_NO_NATIVE === "1" || process.platform !== "linux";

let dir: string;
let model: LlamaModel;
let tokens: Token[];
const contexts: LlamaContext[] = [];
const files: MemoryFile[] = [];
let saved = 0;

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), "kvkeep-memory-handoff-"));
  model = (await loadFixtureModel("tiny")).model;
  tokens = model.tokenize(
    "A cache keeps the state of a conversation, so that the model resumes at once when the user returns. ".repeat(4) + "Why would a user want that?",
  );
});

afterAll(async () => {
  for (const file of files) file.close();
  for (const c of contexts) if (!c.disposed) await c.dispose();
  rmSync(dir, { recursive: true, force: true });
});

async function sequence(): Promise<LlamaContextSequence> {
  const context = await createContext(model, { contextSize: 1024, threads: 1 });
  contexts.push(context);
  return context.getSequence();
}

function memoryFile(): MemoryFile {
  const file = loadNativeFs().createMemoryFile("kvkeep-handoff-test");
  if (file === null) throw new Error("no in-memory files on this backend");
  files.push(file);
  return file;
}

async function saveToDisk(seq: LlamaContextSequence): Promise<Buffer> {
  const path = join(dir, `state-${saved++}.bin`);
  await seq.saveStateToFile(path);
  return readFileSync(path);
}

/** What the descriptor holds, read with Node's fs (not through kvkeep's API). */
function bytesOfFd(fd: number): Buffer {
  const out: Buffer[] = [];
  const chunk = Buffer.alloc(1 << 16);
  for (let position = 0; ; ) {
    const n = readSync(fd, chunk, 0, chunk.byteLength, position);
    if (n === 0) break;
    out.push(Buffer.from(chunk.subarray(0, n)));
    position += n;
  }
  return Buffer.concat(out);
}

describe.skipIf(skip)("the engine saves to and loads from a memory file", () => {
  it("a save to the memory file's path writes the same bytes as a save to a regular file", async () => {
    const seq = await sequence();
    await seq.evaluateWithoutGeneratingNewTokens(tokens);
    const file = memoryFile();
    const { fileSize } = await seq.saveStateToFile(file.path);
    const onDisk = await saveToDisk(seq);
    expect(fileSize).toBe(onDisk.byteLength);
    expect(file.size()).toBe(onDisk.byteLength);
    expect(bytesOfFd(file.fd).equals(onDisk)).toBe(true);
    expect((await file.read()).equals(onDisk)).toBe(true);
  });

  it("saving again into the same memory file replaces it: a shorter state leaves nothing of the longer (fopen 'wb' truncates)", async () => {
    const file = memoryFile();
    const long = await sequence();
    await long.evaluateWithoutGeneratingNewTokens(tokens);
    await long.saveStateToFile(file.path);
    const short = await sequence();
    await short.evaluateWithoutGeneratingNewTokens(tokens.slice(0, 40));
    await short.saveStateToFile(file.path);
    const expected = await saveToDisk(short);
    expect(file.size()).toBe(expected.byteLength);
    expect((await file.read()).equals(expected)).toBe(true);
  });

  it("a state written into a memory file (a gather write of joined chunks) loads from its path and continues exactly as from a regular file", async () => {
    const original = await sequence();
    await original.evaluateWithoutGeneratingNewTokens(tokens.slice(0, -1));
    const state = await saveToDisk(original);
    const diskPath = join(dir, `state-${saved - 1}.bin`);
    const { chunks, tail, layout } = splitSeqState(state, { chunkTokens: 64 });
    const file = memoryFile();
    await file.write(joinSeqStateParts({ geometry: layout.geometry, pieces: [...chunks, tail] }).parts);
    expect((await file.read()).equals(state)).toBe(true);

    const fromMemory = await sequence();
    await fromMemory.loadStateFromFile(file.path, { acceptRisk: true });
    const fromDisk = await sequence();
    await fromDisk.loadStateFromFile(diskPath, { acceptRisk: true });
    expect(fromMemory.contextTokens).toEqual(tokens.slice(0, -1));

    const last = tokens.slice(-1);
    const memoryReply = await greedyGenerate(fromMemory, last, 16);
    const diskReply = await greedyGenerate(fromDisk, last, 16);
    const inMemory = await greedyGenerate(original, last, 16);
    expect(memoryReply.tokens).toEqual(diskReply.tokens);
    expect(memoryReply.tokens).toEqual(inMemory.tokens);
    // the engine's open and close of the path left kvkeep's descriptor open
    expect(file.fd).toBeGreaterThanOrEqual(0);
    expect((await file.read()).equals(state)).toBe(true);
  });

  it("an empty memory file fails to load with an error the caller can catch (the process lives on)", async () => {
    const file = memoryFile();
    const seq = await sequence();
    await expect(seq.loadStateFromFile(file.path, { acceptRisk: true })).rejects.toThrow();
    // the sequence is usable afterwards: a cold run is the fallback
    expect((await greedyGenerate(seq, tokens.slice(0, 20), 4)).tokens.length).toBeGreaterThan(0);
  });
});
