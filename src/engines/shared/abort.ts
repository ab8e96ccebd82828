/** How a completion ends when its caller aborts it: one error, code ABORTED, for every adapter. */
import { KvKeepError } from "../../errors.js";

/** The error an aborted completion rejects with (the turn was rolled back first). */
export function abortedCompletion(signal: AbortSignal | undefined): KvKeepError {
  return new KvKeepError("ABORTED", "the completion was aborted; its turn was rolled back.", { cause: signal?.reason });
}

export function throwIfAborted(signal: AbortSignal | undefined): void {
  if (signal?.aborted) throw abortedCompletion(signal);
}

/** An `AbortSignal` of any realm (Node's, Bare's bare-abort-controller): judged by its members. */
export function isAbortSignal(value: unknown): value is AbortSignal {
  const s = value as AbortSignal | null;
  return typeof s === "object" && s !== null && typeof s.aborted === "boolean" && typeof s.addEventListener === "function";
}
