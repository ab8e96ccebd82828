/**
 * A real pseudo-terminal for CLI tests, without a native npm package: Python's `pty` module
 * (python3 is on every machine that builds the addon) forks the command onto a new terminal
 * and plays a script on it — wait until the screen shows a pattern, then type — so a test
 * talks to an interactive command the way a person does (line editing, raw keys, Ctrl-C as
 * a byte). The driver runs as a child process with a kill timeout, and closes the terminal
 * (SIGHUP to the command) if a step times out.
 */
import { spawn } from "node:child_process";

/** One step: wait until the screen (after the previous match) matches `expect`, then type `send`. */
export interface PtyStep {
  /** A Python regular expression, matched on the screen without ANSI escapes and with `\r\n` as `\n`. */
  readonly expect?: string;
  /** Typed into the terminal: `\r` is Enter, `\x03` Ctrl-C, `\x04` Ctrl-D. */
  readonly send?: string;
}

export interface PtyRun {
  /** The command's exit status (128 + n for a signal n); -1 when a step failed. */
  readonly code: number;
  /** What the terminal showed, ANSI escapes removed, `\r\n` as `\n`. */
  readonly screen: string;
  /** Each step's `expect` match groups, in order (empty for a step without `expect`). */
  readonly groups: readonly string[][];
}

const DRIVER = String.raw`
import fcntl, json, os, pty, re, select, signal, struct, sys, termios, time
steps = json.loads(sys.argv[1]); step_timeout = float(sys.argv[2]); argv = sys.argv[3:]
pid, fd = pty.fork()
if pid == 0:
    os.execvp(argv[0], argv)
fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
raw = b""
eof = False
ANSI = re.compile(rb"\x1b\[[0-9;?]*[ -/]*[@-~]|\x1b[()][0-9A-Za-z]|\x1b[=>]")
def clean():
    return ANSI.sub(b"", raw).replace(b"\r\n", b"\n").replace(b"\r", b"").decode("utf-8", "replace")
def pump(deadline):
    global raw, eof
    left = deadline - time.time()
    if left <= 0 or eof:
        return False
    r, _, _ = select.select([fd], [], [], left)
    if not r:
        return False
    try:
        chunk = os.read(fd, 65536)
    except OSError:
        chunk = b""
    if not chunk:
        eof = True
        return False
    raw += chunk
    return True
def finish(code, groups, failure):
    print(json.dumps({"code": code, "screen": clean(), "groups": groups, "failure": failure}))
    sys.exit(0)
pos = 0
groups = []
for i, step in enumerate(steps):
    found = []
    if "expect" in step:
        rx = re.compile(step["expect"])
        deadline = time.time() + step_timeout
        while True:
            m = rx.search(clean(), pos)
            if m:
                pos = m.end()
                found = list(m.groups())
                break
            if not pump(deadline):
                if not eof and time.time() < deadline:
                    continue
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                finish(-1, groups, "step %d: %s did not appear (%s)" % (i, step["expect"], "the command ended" if eof else "timeout"))
    groups.append(found)
    if "send" in step:
        os.write(fd, step["send"].encode())
deadline = time.time() + step_timeout
while not eof and time.time() < deadline:
    pump(deadline)
if not eof:
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    finish(-1, groups, "the command did not end after the last step")
_, status = os.waitpid(pid, 0)
finish(os.WEXITSTATUS(status) if os.WIFEXITED(status) else 128 + os.WTERMSIG(status), groups, None)
`;

/**
 * Run `argv` on a new pseudo-terminal (40×120), playing `steps`, then wait for it to end.
 * Rejects with what the screen showed when a step's pattern does not appear within
 * `stepTimeoutMs` or the command does not end after the last step.
 */
export function runOnPty(argv: readonly string[], steps: readonly PtyStep[], options: { stepTimeoutMs?: number; env?: NodeJS.ProcessEnv } = {}): Promise<PtyRun> {
  const stepTimeoutMs = options.stepTimeoutMs ?? 60_000;
  const child = spawn("python3", ["-c", DRIVER, JSON.stringify(steps), String(stepTimeoutMs / 1000), ...argv], {
    stdio: ["ignore", "pipe", "pipe"],
    env: { ...process.env, TERM: "xterm", ...options.env },
  });
  let stdout = "";
  let stderr = "";
  child.stdout.on("data", (d: Buffer) => (stdout += d.toString()));
  child.stderr.on("data", (d: Buffer) => (stderr += d.toString()));
  // The driver bounds every step; this bounds the driver.
  const killAfterMs = stepTimeoutMs * (steps.length + 2) + 10_000;
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => child.kill("SIGKILL"), killAfterMs);
    child.on("error", reject);
    child.on("close", (code) => {
      clearTimeout(timer);
      let result: PtyRun & { failure: string | null };
      try {
        result = JSON.parse(stdout) as PtyRun & { failure: string | null };
      } catch {
        reject(new Error(`the pty driver failed (exit ${code}): ${stderr || stdout}`));
        return;
      }
      if (result.failure !== null) reject(new Error(`${result.failure}; the screen:\n${result.screen}`));
      else resolve({ code: result.code, screen: result.screen, groups: result.groups });
    });
  });
}
