/**
 * The fingerprint of a loaded QVAC model: what its state files' layout and meaning depend
 * on. A state file carries nothing that identifies its model, a same-shape state from other
 * weights loads silently, and a truncated one aborts the process (QVAC-FACTS.md): so the
 * fingerprint covers sampled weight bytes of every model file, the addon version and every
 * load-time setting except those that only steer sampling or logging.
 */
import { xxh64Hex } from "../../keys/hash.js";
import { sampleFile, stableJson } from "../fingerprint-parts.js";
import { SUPPORTED_QVAC_ADDON_VERSION } from "./addon-version.js";
import type { QvacModel } from "./model.js";

/** Load-time settings that change what is sampled or logged, never the KV state's layout. */
const NOT_STATE = new Set([
  "temp",
  "top_p",
  "top_k",
  "predict",
  "seed",
  "repeat_penalty",
  "presence_penalty",
  "frequency_penalty",
  "reverse_prompt",
  "verbosity",
  "system_prompt",
  "reasoning_budget",
  "openclCacheDir",
  "threads",
]);

export async function fingerprintQvacModel(model: QvacModel): Promise<string> {
  const files = model._files ?? [];
  const config = Object.fromEntries(
    Object.entries(model._config ?? {})
      .filter(([key]) => !NOT_STATE.has(key))
      .sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0))
      .map(([key, value]) => [key, String(value)]),
  );
  const parts = {
    format: "kvkeep-qvac-fp-1",
    addon: `@qvac/llm-llamacpp@${SUPPORTED_QVAC_ADDON_VERSION}`,
    files: await Promise.all(files.map((file) => sampleFile(file))),
    projection: model._projectionModelPath ? await sampleFile(model._projectionModelPath) : null,
    config,
  };
  return xxh64Hex(stableJson(parts));
}
