/**
 * Which Bare runtimes kvkeep's Bare build supports. Pure (no Bare import), so Node tests it.
 *
 * The floor is the oldest Bare the tests run on (test/bare: the `bare` package's 1.31 and
 * bare-runtime-linux-x64's 1.33). Older ones are refused at import rather than run untested:
 * what broke on Bare 1.31 before it was tested — the addon's bytes arriving as zeros, so no
 * cache ever resumed — failed silently.
 */
import { KvKeepError } from "../../errors.js";

export const MIN_BARE_VERSION = "1.31.0";

function parse(version: string): [number, number, number] | null {
  const m = /^v?(\d+)\.(\d+)\.(\d+)/.exec(version.trim());
  return m ? [Number(m[1]), Number(m[2]), Number(m[3])] : null;
}

/** Why `version` (`Bare.version`, e.g. "v1.31.0") is not supported, or null when it is. */
export function unsupportedBareReason(version: unknown): string | null {
  const got = typeof version === "string" ? parse(version) : null;
  if (!got) return `it could not tell this Bare's version (Bare.version is ${JSON.stringify(version)})`;
  const min = parse(MIN_BARE_VERSION)!;
  for (let i = 0; i < 3; i++) {
    if (got[i]! > min[i]!) return null;
    if (got[i]! < min[i]!) return `this is Bare ${got.join(".")}`;
  }
  return null;
}

/** Throws RUNTIME_UNSUPPORTED for a Bare older than MIN_BARE_VERSION (the Bare build runs this at import). */
export function assertSupportedBare(version: unknown): void {
  const reason = unsupportedBareReason(version);
  if (reason === null) return;
  throw new KvKeepError(
    "RUNTIME_UNSUPPORTED",
    `kvkeep needs Bare ${MIN_BARE_VERSION} or later, and ${reason}. Install a current one: \`npm install bare\` (then \`npx bare app.js\`), or the binary package for your platform (e.g. bare-runtime-linux-x64).`,
  );
}
