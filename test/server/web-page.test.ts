/**
 * kvkeep serve's web page in a real browser: Debian's headless Chromium driven by
 * playwright-core, against a real server (two API keys) on the tiny model. A person opens
 * `/`, gives the key, sends messages; the replies stream in, each with its cache line; the
 * conversation is listed as kept by kvkeep, and after a reload it resumes from its cache.
 * The screenshot in the README (docs/web-page.png) is taken here: `KVKEEP_SCREENSHOT=1 npx
 * vitest run test/server/web-page.test.ts`.
 */
import { existsSync, mkdirSync, mkdtempSync, rmSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { type Browser, chromium, type Page } from "playwright-core";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { type ServeProcess, startServe } from "./helpers.js";

const CHROMIUM = "/usr/bin/chromium";
const FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run"];
const KEY = "sk-web-page";
const OTHER_KEY = "sk-someone-else";
const repo = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../..");

let root: string;
let server: ServeProcess;
let browser: Browser;

beforeAll(async () => {
  if (!existsSync(CHROMIUM)) throw new Error(`${CHROMIUM} is missing: install Debian's chromium (apt-get install chromium; .ci/run does)`);
  root = mkdtempSync(path.join(os.tmpdir(), "kvkeep-web-"));
  server = await startServe(["--ctx", "4096", "--root", root, "--api-key", KEY, "--api-key", OTHER_KEY]);
  browser = await chromium.launch({ executablePath: CHROMIUM, args: FLAGS, headless: true });
}, 120_000);

afterAll(async () => {
  await browser?.close();
  if (server) expect(await server.stop(), server.run.stderr()).toBe(0);
  rmSync(root, { recursive: true, force: true });
});

/** The cache lines of the assistant's replies, in order. */
const cacheLines = (page: Page): Promise<string[]> => page.locator(".msg.assistant .cache").allTextContents();

/** Send a message and wait for its reply's cache line; returns that line. */
async function send(page: Page, text: string): Promise<string> {
  const before = (await cacheLines(page)).filter((l) => l.length > 0).length;
  await page.fill("#input", text);
  await page.press("#input", "Enter");
  await page.waitForFunction(
    (n) => Array.from((globalThis as unknown as { document: { querySelectorAll(s: string): ArrayLike<{ textContent: string | null }> } }).document.querySelectorAll(".msg.assistant .cache")).filter((e) => e.textContent).length > n,
    before,
    { timeout: 120_000 },
  );
  return (await cacheLines(page)).filter((l) => l.length > 0).at(-1)!;
}

/** "<cached> of <prompt> prompt tokens from …" → [cached, prompt]. */
function tokensOf(line: string): [number, number] {
  const m = /([\d,]+) of ([\d,]+) prompt tokens/.exec(line);
  expect(m, line).not.toBeNull();
  return [Number(m![1]!.replaceAll(",", "")), Number(m![2]!.replaceAll(",", ""))];
}

describe("the web page", () => {
  it("chats in a real browser: streamed replies with their cache line, the conversation kept and resumed after a reload", async () => {
    const context = await browser.newContext({ viewport: { width: 1180, height: 760 } });
    const page = await context.newPage();
    const failed: string[] = [];
    page.on("requestfailed", (r) => failed.push(r.url()));
    page.on("pageerror", (e) => failed.push(String(e)));
    await page.goto(`${server.url}/`);
    // Short replies: the random-weights model never ends a reply itself, and three 512-token
    // replies cost minutes on a loaded 2-core machine. The page reads this setting per request.
    await page.evaluate(() => (globalThis as unknown as { localStorage: { setItem(k: string, v: string): void } }).localStorage.setItem("kvkeep.maxTokens", "32"));
    // Without the key the API answers 401, and the page says so.
    await expect.poll(() => page.textContent("#model"), { timeout: 30_000 }).toMatch(/API key/i);
    await page.fill("#key", KEY);
    await page.press("#key", "Tab"); // change → stored, the page reconnects
    await expect.poll(() => page.textContent("#model"), { timeout: 30_000 }).toMatch(/^model /);
    expect(await page.evaluate(() => (globalThis as unknown as { localStorage: { getItem(k: string): string | null } }).localStorage.getItem("kvkeep.apiKey"))).toBe(KEY);

    await page.fill("#system", "You are a friendly assistant that answers in one short paragraph.");
    const first = await send(page, "Hello! What can you do?");
    const [cached1, prompt1] = tokensOf(first);
    expect(cached1).toBe(0); // a new conversation
    expect(first).toMatch(/time to first token \d+ ms/);
    expect(first).toContain("state saved");
    const reply = (await page.locator(".msg.assistant .text").first().textContent()) ?? "";
    expect(reply.length).toBeGreaterThan(0);

    // The second turn resumes from the conversation's own cache: at least the first prompt comes from it.
    const second = await send(page, "Tell me more about caching, please.");
    const [cached2] = tokensOf(second);
    expect(second).toContain("this conversation's cache");
    expect(cached2).toBeGreaterThanOrEqual(prompt1);

    // Listed as kept by kvkeep (GET /kvkeep/sessions, this key's scope).
    await expect.poll(() => page.locator(".conv.active .status").textContent(), { timeout: 30_000 }).toMatch(/kept by kvkeep: 5 messages/) // the system prompt, two questions, two replies;
    await page.screenshot({ path: screenshotPath() });

    // Reload: the conversation comes back from localStorage and resumes from kvkeep's cache.
    await page.reload();
    await expect.poll(() => page.locator(".conv").count(), { timeout: 30_000 }).toBe(1);
    await page.locator(".conv").first().click();
    expect(await page.locator(".msg.assistant").count()).toBe(2);
    const third = await send(page, "And after a reload?");
    const [cached3, prompt3] = tokensOf(third);
    expect(third).toContain("this conversation's cache");
    expect(cached3 / prompt3).toBeGreaterThan(0.8);
    expect(failed).toEqual([]);
    await context.close();
  }, 240_000);

  it("lists only the caller's key's sessions", async () => {
    const list = async (key: string): Promise<string[]> => {
      const response = await fetch(`${server.url}/kvkeep/sessions`, { headers: { authorization: `Bearer ${key}` } });
      expect(response.status).toBe(200);
      return ((await response.json()) as { data: Array<{ name: string }> }).data.map((s) => s.name);
    };
    const mine = await list(KEY);
    expect(mine.length).toBeGreaterThanOrEqual(1);
    expect(mine.every((name) => name.startsWith("web-"))).toBe(true);
    expect(await list(OTHER_KEY)).toEqual([]);
  });
});

/**
 * Where the screenshot goes: docs/web-page.png in the checkout (the README's) when
 * KVKEEP_SCREENSHOT=1, else beside the test's root (a test run leaves the checkout as it was).
 */
function screenshotPath(): string {
  if (process.env.KVKEEP_SCREENSHOT !== "1") return path.join(root, "web-page.png");
  const dir = path.join(repo, "docs");
  if (!existsSync(dir)) mkdirSync(dir, { recursive: true });
  return path.join(dir, "web-page.png");
}
