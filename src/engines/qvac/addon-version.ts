/**
 * Which `@qvac/llm-llamacpp` kvkeep/qvac drives: exactly 0.53.0. Its cache API is changing
 * upstream (`saveCacheToDisk` is being replaced by `model.saveCache()` with full-history
 * prompts), so another version is refused with one error naming the supported one.
 */
import { readFileSync } from "node:fs";
import { fileURLToPath } from "node:url";
import { KvKeepError } from "../../errors.js";
import type { QvacModel } from "./model.js";

export const SUPPORTED_QVAC_ADDON_VERSION = "0.53.0";

const INSTALL = `npm install @qvac/llm-llamacpp@${SUPPORTED_QVAC_ADDON_VERSION}`;

/** The installed version as resolved from kvkeep (the peer dependency), or null when it is not installed. */
export function installedAddonVersion(): string | null {
  let manifestUrl: string;
  try {
    manifestUrl = import.meta.resolve("@qvac/llm-llamacpp/package");
  } catch {
    return null;
  }
  try {
    const manifest = JSON.parse(readFileSync(fileURLToPath(manifestUrl), "utf8")) as { version?: unknown };
    return typeof manifest.version === "string" ? manifest.version : null;
  } catch {
    return null;
  }
}

function unsupported(message: string): KvKeepError {
  return new KvKeepError("ENGINE_UNSUPPORTED", `${message} kvkeep/qvac supports @qvac/llm-llamacpp ${SUPPORTED_QVAC_ADDON_VERSION} exactly (${INSTALL}).`, {
    argument: "model",
  });
}

/**
 * Refuses anything but a loaded `LlmLlamacpp` of the supported version: `version` is what
 * `installedAddonVersion()` found (injectable for tests).
 */
export function assertSupportedAddon(model: unknown, version: string | null = installedAddonVersion()): asserts model is QvacModel {
  if (version === null) throw unsupported("@qvac/llm-llamacpp is not installed where kvkeep can resolve it.");
  if (version !== SUPPORTED_QVAC_ADDON_VERSION) throw unsupported(`@qvac/llm-llamacpp ${version} is installed.`);
  const m = model as Partial<QvacModel> | null | undefined;
  if (!m || typeof m !== "object" || typeof m.run !== "function") {
    throw unsupported("model is not an LlmLlamacpp instance (new LlmLlamacpp({ files, config }) from @qvac/llm-llamacpp).");
  }
  if (!m.addon || typeof m.addon.cancelJob !== "function" || typeof m.addon.runJob !== "function") {
    throw new KvKeepError("INVALID_ARGUMENT", "model is not loaded: await model.load() before createQvacCompletion.", { argument: "model" });
  }
}
