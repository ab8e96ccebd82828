/**
 * kvkeep's import rules (ARCHITECTURE.md, "Layers"): arrows only point down. `npm test` checks
 * them (test/tooling/import-rules.test.ts, which also proves each rule fires on a planted
 * violation); `npm run test:imports` prints every broken rule.
 *
 * The layers, top to bottom. A module may import its own layer and the layers below it,
 * never one above; the named rules after them say what each layer must not know even below.
 */
const layers = [
  { name: "top", what: "cli/, server/, metrics/ and the package root", paths: ["^src/cli/", "^src/server/", "^src/metrics/", "^src/index\\.ts$"] },
  { name: "engines", what: "engines/", paths: ["^src/engines/"] },
  { name: "warm", what: "warm/", paths: ["^src/warm/"] },
  { name: "facade", what: "facade/ (openKvCacheStore: store + session)", paths: ["^src/facade/"] },
  { name: "session", what: "session/", paths: ["^src/session/"] },
  { name: "store", what: "store/", paths: ["^src/store/"] },
  { name: "retention", what: "retention/ (the sweeper)", paths: ["^src/retention/"] },
  { name: "catalog", what: "catalog/ (the root catalog)", paths: ["^src/catalog/"] },
  { name: "remote", what: "remote/", paths: ["^src/remote/"] },
  { name: "chunkfiles", what: "chunkfiles/ (chunk files, the chunk gate, chunk GC)", paths: ["^src/chunkfiles/"] },
  { name: "manifest", what: "manifest/", paths: ["^src/manifest/"] },
  { name: "durable", what: "durable/ and locks/", paths: ["^src/durable/", "^src/locks/"] },
  { name: "native", what: "native/ and platform/", paths: ["^src/native/", "^src/platform/"] },
  {
    name: "pure",
    what: "the pure layers",
    paths: ["^src/chunks/", "^src/prefix/", "^src/keys/", "^src/layout/", "^src/slice/", "^src/(errors|types|logger|suggest)\\.ts$"],
  },
];

const either = (paths) => `(${paths.join("|")})`;
const pathsOf = (names) => layers.filter((l) => names.includes(l.name)).flatMap((l) => l.paths);

/** One rule per layer: nothing it imports may sit in a layer above it. */
const downOnly = layers.slice(1).map((layer, i) => ({
  name: `down-only-${layer.name}`,
  comment: `${layer.what} imports only its own layer and those below it (ARCHITECTURE.md, "Layers"): not ${layers
    .slice(0, i + 1)
    .map((l) => l.name)
    .join(", ")}`,
  severity: "error",
  from: { path: either(layer.paths) },
  to: { path: either(layers.slice(0, i + 1).flatMap((l) => l.paths)) },
}));

module.exports = {
  forbidden: [
    {
      name: "no-circular",
      comment: "a circle of imports has no bottom: break it with an interface the lower module owns",
      severity: "error",
      from: { path: "^src/" },
      to: { circular: true },
    },
    ...downOnly,
    {
      name: "pure-without-io",
      comment: "a pure layer computes: no node:fs, node:os, child processes or timers of its own (node:path and node:crypto only)",
      severity: "error",
      from: { path: either(pathsOf(["pure"])) },
      to: { dependencyTypes: ["core"], pathNot: "^(node:)?(path|crypto)$" },
    },
    {
      name: "durable-without-manifest",
      comment: "durable/ and locks/ know nothing of manifests (the file-identity type lives in durable/)",
      severity: "error",
      from: { path: either(pathsOf(["durable"])) },
      to: { path: either(pathsOf(["manifest"])) },
    },
    {
      name: "engines-ask-the-store",
      comment:
        "engines use only the public store/session API (facade/, types.ts), keys, slice, chunks (pure), errors, logger and warm types: never the store's files, layout, locks, native addon, catalog or sweeper",
      severity: "error",
      from: { path: "^src/engines/" },
      to: { path: either([...pathsOf(["session", "store", "retention", "catalog", "remote", "chunkfiles", "manifest", "durable", "native"]), "^src/layout/"]) },
    },
    {
      name: "cli-reads-through-the-store",
      comment: "the CLI's views ask the store layer (src/store/inspect.ts, openCliStore), not the files, manifests, locks, addon, catalog or sweeper directly",
      severity: "error",
      from: { path: "^src/cli/" },
      to: { path: either(pathsOf(["session", "retention", "catalog", "chunkfiles", "manifest", "durable", "native"])) },
    },
  ],
  options: {
    doNotFollow: { path: "node_modules" },
    tsPreCompilationDeps: true,
    tsConfig: { fileName: "tsconfig.json" },
    enhancedResolveOptions: { exportsFields: ["exports"], conditionNames: ["import", "require", "node", "default", "types"] },
  },
};
