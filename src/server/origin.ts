/**
 * Which requests a browser could have sent on behalf of another site (pure). A page on any
 * origin can make the browser send requests to `http://127.0.0.1:8080`, and with DNS
 * rebinding (its own name re-pointed at 127.0.0.1) even read the answers as same-origin. Two
 * headers tell such requests apart, and browsers never let a page set either:
 *
 * - `Host`: a rebinding page's requests carry its own name (`attacker.example:8080`). A server
 *   without an API key answers only to names that cannot be rebound — loopback names
 *   (`localhost`, `*.localhost`), IP literals — and the name it was told to bind (`--host`).
 *   With a key, the key guards every route (a rebinding page cannot know it), and any name
 *   the server is reached by is fine.
 * - `Origin`: sent by browsers on cross-origin requests and on every POST. A request whose
 *   Origin is not this server's own (`http://<Host>`) — or is `null` (sandboxed frames,
 *   `file:` pages) — comes from another site's page. kvkeep sends no CORS headers, so no page
 *   on another origin could use the answers anyway; a page kvkeep itself would serve at `/`
 *   is same-origin and keeps working. Clients outside browsers send no Origin.
 */

/** The name part of a Host header (`[::1]:8080` → `::1`, `Example.COM.` → `example.com`); null when malformed. */
export function hostName(hostHeader: string): string | null {
  const value = hostHeader.trim().toLowerCase();
  if (value.length === 0) return null;
  let name: string;
  if (value.startsWith("[")) {
    const end = value.indexOf("]");
    if (end < 0) return null;
    name = value.slice(1, end);
    const rest = value.slice(end + 1);
    if (rest !== "" && !/^:\d{1,5}$/.test(rest)) return null;
  } else {
    const colon = value.lastIndexOf(":");
    name = colon >= 0 ? value.slice(0, colon) : value;
    if (colon >= 0 && !/^\d{1,5}$/.test(value.slice(colon + 1))) return null;
    if (name.includes(":")) return null; // an unbracketed IPv6 literal with a port is not a Host
  }
  return name.endsWith(".") ? name.slice(0, -1) : name;
}

const IPV4 = /^(?:\d{1,3}\.){3}\d{1,3}$/;
/** An IPv6 literal as it can appear in brackets (hex groups, `::`, an optional IPv4 tail, a zone). */
const IPV6 = /^[0-9a-f:]*:[0-9a-f:.]*(?:%[0-9a-z._~-]+)?$/;

/** Names DNS cannot point elsewhere: loopback names and IP literals. */
function unrebindable(name: string): boolean {
  return name === "localhost" || name.endsWith(".localhost") || IPV4.test(name) || IPV6.test(name);
}

/**
 * Whether a request with this Host header may be served. `boundHost`: the `--host` the
 * server listens on; `keyed`: an API key guards the routes (then every name is fine).
 */
export function hostAllowed(hostHeader: string | undefined, boundHost: string, keyed: boolean): boolean {
  if (keyed) return true;
  if (hostHeader === undefined) return false; // HTTP/1.1 requires it; without one, nothing says which name was asked
  const name = hostName(hostHeader);
  if (name === null) return false;
  const bound = hostName(boundHost.includes(":") && !boundHost.startsWith("[") ? `[${boundHost}]` : boundHost);
  return unrebindable(name) || (bound !== null && name === bound);
}

/** Whether a request with this Origin header (absent: not from a browser page) comes from this server's own origin. */
export function originAllowed(origin: string | undefined, hostHeader: string | undefined): boolean {
  if (origin === undefined) return true;
  if (hostHeader === undefined) return false;
  let parsed: URL;
  try {
    parsed = new URL(origin);
  } catch {
    return false; // "null", or garbage
  }
  let own: string;
  try {
    own = new URL(`http://${hostHeader.trim()}`).host;
  } catch {
    return false;
  }
  return parsed.protocol === "http:" && parsed.pathname === "/" && parsed.host === own;
}
