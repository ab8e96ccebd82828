import { defineConfig } from "tsup";

export default defineConfig({
  entry: {
    index: "src/index.ts",
    "engines/node-llama-cpp/index": "src/engines/node-llama-cpp/index.ts",
    "remote/redis/index": "src/remote/redis/index.ts",
    "engines/qvac/index": "src/engines/qvac/index.ts",
    "cli/bin": "src/cli/bin.ts",
    "metrics/index": "src/metrics/index.ts",
    "warm/index": "src/warm/index.ts",
    "keys/index": "src/keys/index.ts",
  },
  format: ["esm"],
  target: "node20",
  dts: true,
  sourcemap: true,
  clean: true,
  splitting: true,
  external: ["node-llama-cpp", "redis", "fastify", "prom-client"],
});
