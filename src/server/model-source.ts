/**
 * What `--model` names: a GGUF file on this machine, or a model node-llama-cpp resolves —
 * an `hf:` URI (`hf:Qwen/Qwen3-0.6B-GGUF:Q8_0`) or an http(s) URL — downloading it into its
 * models directory the first time, as `node-llama-cpp pull` does. The download is
 * node-llama-cpp's own (`resolveModelFile`): same file names, same directory, so a model
 * pulled with node-llama-cpp's CLI is found without downloading it again.
 */
import { promises as fs } from "node:fs";
import path from "node:path";
import type { Llama, LlamaModel } from "node-llama-cpp";
import type { StartupStep } from "./startup-status.js";

/** `"uri"` for `hf:…`, `https://…`, `http://…` (any scheme of two or more letters); `"file"` for a path. */
export function modelSpecKind(spec: string): "file" | "uri" {
  // Two letters or more: a Windows drive ("C:\models\m.gguf") is a path.
  return /^[a-z][a-z0-9+.-]+:/i.test(spec) ? "uri" : "file";
}

export interface ModelDownloadProgress {
  readonly downloadedBytes: number;
  readonly totalBytes: number;
}

export interface ResolveModelOptions {
  /** Where URIs are resolved from and downloaded to; null or absent = node-llama-cpp's default (~/.node-llama-cpp/models). */
  readonly modelsDir?: string | null;
  /** Called as a download progresses (not called when the file is already there). */
  readonly onDownload?: (progress: ModelDownloadProgress) => void;
  readonly signal?: AbortSignal;
}

export interface ResolvedModel {
  /** The local GGUF file. */
  readonly path: string;
  readonly bytes: number;
  /** The file's mtime in whole seconds (OpenAI's `created` of the model). */
  readonly createdSeconds: number;
  /** Whether it was downloaded now. */
  readonly downloaded: boolean;
}

/** A model that cannot be found or fetched: the message says which and what to pass instead. */
export class ModelSourceError extends Error {
  override readonly name = "ModelSourceError";
}

/** The local file `spec` names, downloading it first when it is a URI not yet downloaded. */
export async function resolveModelSpec(spec: string, options: ResolveModelOptions = {}): Promise<ResolvedModel> {
  if (modelSpecKind(spec) === "file") {
    const file = path.resolve(spec);
    const st = await fs.stat(file).catch(() => null);
    if (!st?.isFile()) {
      throw new ModelSourceError(`${spec}: no such file (pass a GGUF model file, an hf: URI such as hf:Qwen/Qwen3-0.6B-GGUF:Q8_0, or a URL).`);
    }
    return { path: file, bytes: st.size, createdSeconds: Math.floor(st.mtimeMs / 1000), downloaded: false };
  }
  const { resolveModelFile } = await import("node-llama-cpp");
  let downloaded = false;
  let file: string;
  try {
    file = await resolveModelFile(spec, {
      ...(options.modelsDir ? { directory: path.resolve(options.modelsDir) } : {}),
      cli: false, // node-llama-cpp's own progress bar writes to stdout; ours goes to stderr
      onProgress: ({ downloadedSize, totalSize }) => {
        downloaded = true;
        options.onDownload?.({ downloadedBytes: downloadedSize, totalBytes: totalSize });
      },
      ...(options.signal ? { signal: options.signal } : {}),
    });
  } catch (error) {
    throw new ModelSourceError(`${spec}: could not resolve or download it: ${(error as Error).message}`);
  }
  const st = await fs.stat(file);
  return { path: file, bytes: st.size, createdSeconds: Math.floor(st.mtimeMs / 1000), downloaded };
}

/**
 * Load a resolved model on `llama`, reporting its progress as "load" steps. When it cannot be
 * loaded, `llama` is disposed and `fail(error)` is thrown. (kvkeep serve and kvkeep chat.)
 */
export async function loadModelReporting(
  llama: Llama,
  resolved: ResolvedModel,
  onStep: (step: StartupStep) => void,
  fail: (error: Error) => Error,
): Promise<LlamaModel> {
  // node-llama-cpp delivers load progress from a queue: the last calls can arrive after
  // loadModel resolved, and must not reopen a step that is over.
  let loading = true;
  const load = (fraction: number): void => {
    if (loading) onStep({ step: "load", file: path.basename(resolved.path), bytes: resolved.bytes, fraction });
  };
  try {
    load(0);
    const model = await llama.loadModel({ modelPath: resolved.path, onLoadProgress: load });
    load(1);
    return model;
  } catch (error) {
    await llama.dispose();
    throw fail(error as Error);
  } finally {
    loading = false;
  }
}
