/**
 * What `kvkeep serve` (and the demo) say on stderr while they start: downloading the model,
 * starting node-llama-cpp, loading the model, creating the contexts — the seconds before
 * "listening on" that used to pass in silence. On a terminal the current step is one line
 * redrawn in place (at most every 100 ms) with its progress; in a pipe or a log each step
 * is one line when it starts, the download adds a line per 10%, and each step's end says
 * how long it took.
 */
import { formatBytes } from "../cli/format.js";
import type { LlamaBuildChoice } from "../engines/node-llama-cpp/llama-build.js";
import { terminalColumns } from "../cli/progress.js";

export type StartupStep =
  | { readonly step: "download"; readonly spec: string; readonly downloadedBytes: number; readonly totalBytes: number }
  | { readonly step: "engine"; readonly build?: LlamaBuildChoice; readonly binary?: string }
  | { readonly step: "load"; readonly file: string; readonly bytes: number; readonly fraction: number }
  | { readonly step: "contexts"; readonly count: number };

/** One line for `s` (pure). */
export function describeStartupStep(s: StartupStep): string {
  switch (s.step) {
    case "download": {
      const pct = s.totalBytes > 0 ? Math.floor((s.downloadedBytes / s.totalBytes) * 100) : 0;
      return `downloading ${s.spec}: ${formatBytes(s.downloadedBytes)} of ${s.totalBytes > 0 ? formatBytes(s.totalBytes) : "?"} (${pct}%)`;
    }
    case "engine":
      if (s.binary) return `started node-llama-cpp: ${s.binary}`;
      return s.build === "native"
        ? "starting node-llama-cpp (--engine-build native: compiling llama.cpp for this machine first if it has no build yet, minutes)"
        : "starting node-llama-cpp";
    case "load":
      return `loading the model ${s.file} (${formatBytes(s.bytes)}): ${Math.floor(s.fraction * 100)}%`;
    case "contexts":
      return `creating ${s.count === 1 ? "1 context" : `${s.count} contexts`} and warming ${s.count === 1 ? "it" : "them"} up`;
  }
}

export interface StatusStream {
  write(text: string): unknown;
  readonly isTTY?: boolean | undefined;
  readonly columns?: number | undefined;
}

export interface StartupStatus {
  report(step: StartupStep): void;
  /** End the last step (its line gets its duration). */
  done(): void;
}

/** Report startup steps on `stream`, each line prefixed with `prefix` ("kvkeep serve: "). */
export function startupStatus(stream: StatusStream, prefix: string, now: () => number = Date.now): StartupStatus {
  const tty = stream.isTTY === true;
  let current: StartupStep["step"] | null = null;
  let started = 0;
  let lastDraw = 0;
  let lastText = "";
  let lastDecile = -1;
  const fit = (text: string): string => {
    const columns = terminalColumns(stream);
    const line = prefix + text;
    return line.length < columns ? line : `${line.slice(0, Math.max(0, columns - 2))}…`;
  };
  const seconds = (): string => `${((now() - started) / 1000).toFixed(1)} s`;
  const finish = (): void => {
    if (current === null) return;
    if (tty) stream.write(`\r${fit(`${lastText}, done in ${seconds()}`)}\x1b[K\n`);
    else stream.write(`${prefix}${lastText}, done in ${seconds()}\n`);
    current = null;
  };
  return {
    report(s) {
      const text = describeStartupStep(s);
      if (s.step !== current) {
        finish();
        current = s.step;
        started = now();
        lastDecile = s.step === "download" && s.totalBytes > 0 ? Math.floor((s.downloadedBytes / s.totalBytes) * 10) : -1;
        lastText = text;
        lastDraw = now();
        if (tty) stream.write(`\r${fit(text)}\x1b[K`);
        else stream.write(`${prefix}${text}\n`);
        return;
      }
      lastText = text;
      if (tty) {
        if (now() - lastDraw < 100) return;
        lastDraw = now();
        stream.write(`\r${fit(text)}\x1b[K`);
      } else if (s.step === "download" && s.totalBytes > 0) {
        const decile = Math.floor((s.downloadedBytes / s.totalBytes) * 10);
        if (decile > lastDecile && decile < 10) {
          lastDecile = decile;
          stream.write(`${prefix}${text}\n`);
        }
      }
    },
    done: finish,
  };
}
