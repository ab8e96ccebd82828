/**
 * Which llama.cpp binary node-llama-cpp runs: its generic prebuilt one (built once for many
 * CPUs, choosing a CPU variant at run time) or a build for this machine, compiled from the
 * llama.cpp source node-llama-cpp ships (`llama/gitRelease.bundle`, no network) into its
 * `llama/localBuilds`. Pure: options for `getLlama` and words about the result; no import of
 * node-llama-cpp.
 *
 * node-llama-cpp already prefers a local build for the same options when one exists (its
 * default `build: "auto"`), so `auto` is its default; `native` builds one first when there is
 * none; `prebuilt` skips a local build, for comparing the two (bench/peer.ts).
 */

export const LLAMA_BUILD_CHOICES = ["auto", "native", "prebuilt"] as const;
export type LlamaBuildChoice = (typeof LLAMA_BUILD_CHOICES)[number];

/** The command that builds node-llama-cpp's llama.cpp for this CPU, offline, as a user types it. */
export const NATIVE_BUILD_COMMAND = "npx --no node-llama-cpp source download --gpu false";

/**
 * A cmake option no build uses: node-llama-cpp looks for a local build in a folder named
 * after the build's custom cmake options, finds none for this one, and loads the prebuilt
 * binary (which it matches by platform only). The documented way to skip a local build.
 */
const SKIP_LOCAL_BUILD = { KVKEEP_SKIP_LOCAL_BUILD: "ON" } as const;

/** The part of node-llama-cpp's `getLlama` options that picks the binary. */
export interface LlamaBuildOptions {
  readonly build: "auto" | "never" | "try";
  readonly cmakeOptions?: Readonly<Record<string, string>>;
}

/**
 * `getLlama` options for `choice`:
 * - `auto`: node-llama-cpp's default — a local build if there is one, else the prebuilt binary.
 * - `native`: a local build; compile one first if there is none (from the shipped source; a
 *   few minutes), falling back to the prebuilt binary if that fails.
 * - `prebuilt`: the prebuilt binary even when a local build exists; never compiles.
 */
export function llamaBuildOptions(choice: LlamaBuildChoice): LlamaBuildOptions {
  switch (choice) {
    case "auto":
      return { build: "auto" };
    case "native":
      return { build: "try" };
    case "prebuilt":
      return { build: "never", cmakeOptions: SKIP_LOCAL_BUILD };
  }
}

/** What node-llama-cpp's `Llama` says about its binary (structural: any copy of node-llama-cpp). */
export interface LlamaBinaryLike {
  readonly buildType: "localBuild" | "prebuilt";
  readonly gpu: string | false;
  readonly llamaCppRelease: { readonly release: string };
  /** llama.cpp's `llama_print_system_info`: "CPU : SSE3 = 1 | AVX = 1 | … | OPENMP = 1 | …". */
  readonly systemInfo: string;
}

export interface LlamaBinaryDescription {
  /** One line for a log: which binary, which release, which CPU features it uses. */
  readonly line: string;
  /** Set when the generic prebuilt binary runs on a CPU: how to build one for this machine. */
  readonly hint: string | null;
}

/** The CPU features a binary was compiled to use, from its system info ("AVX2 AVX512 …"). */
export function cpuFeatures(systemInfo: string): string[] {
  const features: string[] = [];
  for (const match of systemInfo.matchAll(/([A-Z0-9_]+) = 1/g)) features.push(match[1]!);
  return features;
}

/** Say which binary `llama` runs, and how to get a native build when it is the prebuilt one. */
export function describeLlamaBinary(llama: LlamaBinaryLike): LlamaBinaryDescription {
  const native = llama.buildType === "localBuild";
  const what = native ? "a build for this machine (node-llama-cpp local build)" : "node-llama-cpp's generic prebuilt binary";
  const features = cpuFeatures(llama.systemInfo);
  const line =
    `llama.cpp ${llama.llamaCppRelease.release}, ${what}` +
    `${llama.gpu === false ? ", CPU" : `, ${llama.gpu}`}${features.length > 0 ? ` (${features.join(" ")})` : ""}`;
  const hint =
    native || llama.gpu !== false
      ? null
      : `a build for this CPU can be faster or slower (see docs/performance.md): build one offline with ` +
        `'${NATIVE_BUILD_COMMAND}' or start with --engine-build native`;
  return { line, hint };
}
