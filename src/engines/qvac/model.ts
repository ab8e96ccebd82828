/**
 * The part of `@qvac/llm-llamacpp` 0.53.0 the adapter drives, typed here so kvkeep never
 * imports the package (an optional peer dependency that runs only under Bare). Behaviour
 * relied on is measured in test/fixtures/QVAC-FACTS.md.
 */

/** A chat message as the addon takes it. */
export interface QvacMessage {
  role: string;
  content: string;
}

/** Per-request generation parameters (the addon validates the keys). */
export type QvacGenerationParams = Record<string, unknown> & { predict?: number };

export interface QvacRunOptions {
  /** The state file: loaded when it exists (else a cold start), written at the end with `saveCacheToDisk`. */
  cacheKey?: string;
  saveCacheToDisk?: boolean;
  /** Evaluate without generating (priming). */
  prefill?: boolean;
  generationParams?: QvacGenerationParams;
}

/** `response.stats` with `opts: { stats: true }`. */
export interface QvacRunStats {
  /** Tokens in the state after the run (loaded + evaluated + generated). */
  CacheTokens: number;
  /** Prompt tokens evaluated by this run. */
  promptTokens: number;
  generatedTokens: number;
  stopReason?: "none" | "eos" | "antiprompt" | "predictionLimit" | "sequenceLimit" | "contextOverflow";
}

export interface QvacResponse {
  onUpdate(callback: (piece: string) => void): QvacResponse;
  /** Resolves when the run ended, also after `cancel()`. */
  await(): Promise<unknown>;
  /** Cancels this job only (the addon's `cancelJob(id)`). */
  cancel(): Promise<void>;
  readonly stats?: Partial<QvacRunStats>;
}

/** A loaded `LlmLlamacpp` instance. */
export interface QvacModel {
  run(messages: QvacMessage[], options?: QvacRunOptions): Promise<QvacResponse>;
  /** The native addon; null before `load()` and after `unload()`. */
  readonly addon: { cancelJob(id: number): Promise<void>; runJob(...args: never[]): Promise<unknown> } | null;
  readonly opts?: { stats?: boolean };
  /** Internals of 0.53.0 the fingerprint reads (model files and load-time config). */
  readonly _files?: readonly string[];
  readonly _projectionModelPath?: string;
  readonly _config?: Readonly<Record<string, unknown>>;
}
