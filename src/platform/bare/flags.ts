/**
 * open(2) flags for bare-fs. bare-fs defines only O_RDONLY/O_WRONLY/O_RDWR/O_CREAT/O_TRUNC/
 * O_APPEND; its string flags ("wx", "as", …) OR in O_EXCL/O_SYNC as undefined — i.e. 0 — so
 * an exclusive create would silently truncate an existing file. Here string flags are
 * translated with the real values from the native addon, and numeric flags pass through.
 */
import { platformBinding } from "./native.js";
import { fsBare } from "./runtime.js";

function base(name: "O_RDONLY" | "O_WRONLY" | "O_RDWR" | "O_CREAT" | "O_TRUNC" | "O_APPEND"): number {
  const value = fsBare.constants[name];
  if (typeof value !== "number") throw new Error(`bare-fs defines no ${name}`);
  return value;
}

/** Node's string flags (fs.open) as numbers; a number is returned as is. */
export function openFlags(flags: string | number | undefined): number {
  if (typeof flags === "number") return flags;
  const spec = flags ?? "r";
  const match = /^(?:([rwa])([xs]?)|([xs])([rwa]))(\+?)$/.exec(spec);
  const mode = match?.[1] ?? match?.[4];
  const modifier = match?.[2] || match?.[3] || "";
  if (!match || !mode || (mode === "r" && modifier === "x") || (mode === "w" && modifier === "s")) {
    throw Object.assign(new TypeError(`Invalid open flags: ${JSON.stringify(spec)}`), { code: "ERR_INVALID_ARG_VALUE" });
  }
  const plus = match[5] === "+";
  let value = plus ? base("O_RDWR") : mode === "r" ? base("O_RDONLY") : base("O_WRONLY");
  if (mode === "w") value |= base("O_CREAT") | base("O_TRUNC");
  if (mode === "a") value |= base("O_CREAT") | base("O_APPEND");
  if (modifier === "x") value |= platformBinding().platformConstants.O_EXCL;
  if (modifier === "s") value |= platformBinding().platformConstants.O_SYNC;
  return value;
}
