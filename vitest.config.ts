import { configDefaults, defineConfig } from "vitest/config";

export default defineConfig({
  test: {
    include: ["test/**/*.test.ts"],
    // third-party probes: `npm run facts` (vitest.facts.config.ts), never `npm test`
    exclude: [...configDefaults.exclude, "test/facts/**"],
    globalSetup: ["test/global-setup.ts"],
    testTimeout: 60_000,
    hookTimeout: 120_000,
    pool: "forks",
  },
});
