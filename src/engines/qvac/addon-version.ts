/** The one @qvac/llm-llamacpp version kvkeep/qvac drives (its cache API changes between releases). */
export const SUPPORTED_QVAC_ADDON_VERSION = "0.53.0";
