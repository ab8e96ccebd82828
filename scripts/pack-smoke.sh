#!/usr/bin/env bash
# The package as a user gets it: pack (which builds dist and bundles the prebuilt addons),
# install the tarball into an empty project WITHOUT install scripts (npm 11's default for
# dependencies), and check that kvkeep loads the prebuilt binary and commits a turn.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
npm pack --pack-destination "$work" --silent > /dev/null
if [ "${KVKEEP_REQUIRE_ARM64:-}" = 1 ]; then
  # The cross-built linux-arm64 addon is in the tarball, and works on arm64 Node (qemu).
  tar -xzf "$work"/kvkeep-*.tgz -C "$work" package/prebuilds/linux-arm64/kvkeep.node
  bash scripts/arm64-smoke.sh "$work/package/prebuilds/linux-arm64/kvkeep.node"
fi
mkdir "$work/app" && cd "$work/app"
npm init -y > /dev/null
npm install --ignore-scripts --no-audit --no-fund "$work"/kvkeep-*.tgz > /dev/null
cat > smoke.mjs <<'JS'
import { generateConfigHash, openKvCacheStore } from "kvkeep";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
const store = openKvCacheStore({ root: fs.mkdtempSync(path.join(os.tmpdir(), "kvkeep-smoke-")) });
const session = store.createSession("m");
const turn = await session.beginTurn({ kind: "custom", customKey: "c", configHash: generateConfigHash("s"), primeIfMissing: (p) => fs.promises.writeFile(p, "primed") });
await fs.promises.writeFile(turn.savePath, "state");
const outcome = await session.commitTurn(turn, { kind: "static", messageCount: 2 });
await store.close();
if (store.backend !== "prebuilt" || !outcome.committed) throw new Error(`backend ${store.backend}, outcome ${JSON.stringify(outcome)}`);
console.log(`packed kvkeep works: backend ${store.backend}, commit ok`);
JS
node smoke.mjs
npx --no-install kvkeep backend

# The same package under Bare: its `bare` export condition, the optional bare-* dependencies
# npm installed with it, and the same prebuilt addon.
bare="$repo/node_modules/bare-runtime-linux-x64/bin/bare"
if [ -x "$bare" ]; then
  cat > smoke-bare.mjs <<'JS'
import { generateConfigHash, openKvCacheStore } from "kvkeep";
import fs from "bare-fs";
const root = `/tmp/kvkeep-smoke-bare-${Bare.pid}`;
const store = openKvCacheStore({ root });
const session = store.createSession("m");
const turn = await session.beginTurn({ kind: "custom", customKey: "c", configHash: generateConfigHash("s"), primeIfMissing: async (p) => fs.writeFileSync(p, "primed") });
fs.writeFileSync(turn.savePath, "state");
const outcome = await session.commitTurn(turn, { kind: "static", messageCount: 2 });
await store.close();
fs.rmSync(root, { recursive: true, force: true });
if (store.backend !== "prebuilt" || !outcome.committed) throw new Error(`backend ${store.backend}, outcome ${JSON.stringify(outcome)}`);
console.log(`packed kvkeep works under Bare: backend ${store.backend}, commit ok`);
JS
  "$bare" smoke-bare.mjs
fi
