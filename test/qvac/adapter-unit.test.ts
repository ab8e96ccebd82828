/**
 * The parts of kvkeep/qvac that need no addon: the version and instance checks (one error
 * naming the supported version), QVAC's commit rule, and argument validation.
 */
import { describe, expect, it } from "vitest";
import { openKvCacheStore } from "../../src/index.js";
import { assertSupportedAddon, installedAddonVersion, SUPPORTED_QVAC_ADDON_VERSION } from "../../src/engines/qvac/addon-version.js";
import { shouldCommitCachedTurn } from "../../src/engines/qvac/commit-rules.js";
import { createQvacCompletion } from "../../src/engines/qvac/index.js";
import { tempDir } from "../helpers/temp-root.js";

const loadedModel = { run: async () => ({}), addon: { cancelJob: async () => {}, runJob: async () => ({}) } };

describe("kvkeep/qvac addon checks", () => {
  it("finds the pinned @qvac/llm-llamacpp installed as a dev dependency", () => {
    expect(installedAddonVersion()).toBe(SUPPORTED_QVAC_ADDON_VERSION);
  });

  it("refuses another addon version with one error naming the supported version", () => {
    expect(() => assertSupportedAddon(loadedModel, "0.53.2")).toThrow(
      expect.objectContaining({ code: "ENGINE_UNSUPPORTED", argument: "model", message: expect.stringContaining("0.53.0 exactly") }),
    );
    expect(() => assertSupportedAddon(loadedModel, "0.53.2")).toThrow(/@qvac\/llm-llamacpp 0\.53\.2 is installed/);
  });

  it("refuses when the addon is not installed, saying how to install it", () => {
    expect(() => assertSupportedAddon(loadedModel, null)).toThrow(
      expect.objectContaining({ code: "ENGINE_UNSUPPORTED", message: expect.stringContaining("npm install @qvac/llm-llamacpp@0.53.0") }),
    );
  });

  it("refuses something that is not an LlmLlamacpp, and one that is not loaded", () => {
    expect(() => assertSupportedAddon({}, "0.53.0")).toThrow(expect.objectContaining({ code: "ENGINE_UNSUPPORTED" }));
    expect(() => assertSupportedAddon(undefined, "0.53.0")).toThrow(expect.objectContaining({ code: "ENGINE_UNSUPPORTED" }));
    expect(() => assertSupportedAddon({ run: () => {}, addon: null }, "0.53.0")).toThrow(
      expect.objectContaining({ code: "INVALID_ARGUMENT", argument: "model", message: expect.stringContaining("load()") }),
    );
    expect(() => assertSupportedAddon(loadedModel, "0.53.0")).not.toThrow();
  });

  it("createQvacCompletion refuses a bad model id with kvkeep's key codes, before any file is touched", () => {
    const store = openKvCacheStore({ root: tempDir() });
    expect(() => createQvacCompletion({ model: loadedModel, store, modelId: "a/b" })).toThrow(expect.objectContaining({ code: "KEY_HAS_SEPARATOR" }));
    expect(() => createQvacCompletion({ model: loadedModel, store, modelId: "" })).toThrow(expect.objectContaining({ code: "KEY_EMPTY" }));
    expect(() => createQvacCompletion({ model: loadedModel, store, modelId: "m", fingerprint: 3 as unknown as string })).toThrow(
      expect.objectContaining({ code: "INVALID_ARGUMENT", argument: "fingerprint" }),
    );
    expect(() => createQvacCompletion({ model: loadedModel, store, modelId: "m", scope: "" })).toThrow(
      expect.objectContaining({ code: "INVALID_ARGUMENT", argument: "scope" }),
    );
  });

  it("completion refuses malformed params with INVALID_ARGUMENT naming the argument", async () => {
    const store = openKvCacheStore({ root: tempDir() });
    const llm = createQvacCompletion({ model: loadedModel, store, modelId: "m", fingerprint: "fp" });
    const bad = async (params: unknown) => llm.completion(params as never);
    await expect(bad({ history: [], kvCache: "k" })).rejects.toMatchObject({ code: "INVALID_ARGUMENT", argument: "history" });
    await expect(bad({ history: [{ role: "user" }], kvCache: "k" })).rejects.toMatchObject({ argument: "history" });
    await expect(bad({ history: [{ role: "user", content: "hi" }], kvCache: 1 })).rejects.toMatchObject({ argument: "kvCache" });
    await expect(bad({ history: [{ role: "user", content: "hi" }], kvCache: "k", signal: {} })).rejects.toMatchObject({ argument: "signal" });
    await expect(bad({ history: [{ role: "user", content: "hi" }], kvCache: "k", generationParams: [] })).rejects.toMatchObject({
      argument: "generationParams",
    });
    await expect(bad({ history: [{ role: "user", content: "hi" }], kvCache: ".." })).rejects.toMatchObject({ code: "KEY_DOT_SEGMENT" });
    await expect(bad({ history: [{ role: "user", content: "hi" }], kvCache: "k", scope: "a\uD800" })).rejects.toMatchObject({ argument: "scope" });
    await store.close();
  });
});

describe("QVAC's commit rule", () => {
  const ended = { aborted: false, producedTokens: true, generatedTokens: 10, predict: 200, stoppedAtContextBoundary: false };
  it("commits a reply that ended on its own", () => {
    expect(shouldCommitCachedTurn(ended)).toBe(true);
    expect(shouldCommitCachedTurn({ ...ended, predict: undefined })).toBe(true);
  });
  it("does not commit an aborted, empty, budget-cut or context-cut turn", () => {
    expect(shouldCommitCachedTurn({ ...ended, aborted: true })).toBe(false);
    expect(shouldCommitCachedTurn({ ...ended, producedTokens: false })).toBe(false);
    expect(shouldCommitCachedTurn({ ...ended, generatedTokens: 200 })).toBe(false);
    expect(shouldCommitCachedTurn({ ...ended, stoppedAtContextBoundary: true })).toBe(false);
  });
});
