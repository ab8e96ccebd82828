/**
 * kvkeep for QVAC's llama.cpp addon (`@qvac/llm-llamacpp`) on the Bare runtime:
 * `import { createQvacCompletion } from "kvkeep/qvac"`.
 */
export { SUPPORTED_QVAC_ADDON_VERSION } from "./addon-version.js";
