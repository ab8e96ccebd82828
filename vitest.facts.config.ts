import { defineConfig } from "vitest/config";

/**
 * `npm run facts`: probes of the third-party engines and runtimes themselves (node-llama-cpp,
 * @qvac/llm-llamacpp, Bare), never part of `npm test` — they pin what those do, some of it
 * machine-dependent. Run them after upgrading one of them (test/fixtures/ENGINE-FACTS.md,
 * QVAC-FACTS.md).
 */
export default defineConfig({
  test: {
    include: ["test/facts/**/*.test.ts"],
    testTimeout: 120_000,
    hookTimeout: 120_000,
    pool: "forks",
  },
});
