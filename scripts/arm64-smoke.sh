#!/usr/bin/env bash
# Does the cross-built linux-arm64 addon work? Runs it on a real arm64 Node (Debian's
# nodejs:arm64, unpacked into a private sysroot — nothing is installed for arm64) under
# qemu-user, and compares its XXH64, lock and rename results with the x64 build's.
# Needs root (apt-get); adds the arm64 architecture to dpkg for `apt-get download`.
#   bash scripts/arm64-smoke.sh [path/to/arm64/kvkeep.node]   (default: build-linux-arm64/Release)
set -euo pipefail
cd "$(dirname "$0")/.."
addon=$(realpath "${1:-build-linux-arm64/Release/kvkeep.node}")
x64=$(realpath build-cmake/Release/kvkeep.node)
sysroot=${KVKEEP_ARM64_SYSROOT:-/tmp/kvkeep-arm64-sysroot}

if ! command -v qemu-aarch64 > /dev/null; then apt-get install -y -qq qemu-user > /dev/null; fi
if [ ! -x "$sysroot/usr/bin/node" ]; then
  dpkg --print-foreign-architectures | grep -qx arm64 || { dpkg --add-architecture arm64; apt-get update -qq; }
  debs=$(mktemp -d)
  (cd "$debs" && apt-get download -qq nodejs:arm64 libnode108:arm64 libbrotli1:arm64 libc-ares2:arm64 libicu72:arm64 \
    libnghttp2-14:arm64 libssl3:arm64 libuv1:arm64 zlib1g:arm64 libc6:arm64 libstdc++6:arm64 libgcc-s1:arm64 \
    node-cjs-module-lexer node-acorn node-undici node-busboy 2> /dev/null)
  mkdir -p "$sysroot"
  for deb in "$debs"/*.deb; do dpkg -x "$deb" "$sysroot"; done
  rm -rf "$debs"
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
head -c 3000000 /dev/urandom > "$work/data"
cat > "$work/smoke.cjs" <<'JS'
const [addonPath, dir] = process.argv.slice(2);
const a = require(addonPath);
const fs = require("fs");
(async () => {
  const lock = new a.Lock(dir + "/x.lock", true);
  if (!lock.tryAcquire()) throw new Error("lock not acquired");
  const second = new a.Lock(dir + "/x.lock", true);
  const excluded = !second.tryAcquire();
  second.release();
  lock.unlinkAndRelease();
  fs.writeFileSync(dir + "/from-" + process.arch, "x");
  const how = await a.renameNoReplace(dir + "/from-" + process.arch, dir + "/to-" + process.arch);
  await a.fsyncDir(dir);
  console.log(JSON.stringify({ abi: a.abi, xxh64: await a.xxh64File(dir + "/data"), excluded, rename: how }));
})().catch((e) => { console.error(e); process.exit(1); });
JS
arm=$(qemu-aarch64 -L "$sysroot" "$sysroot/usr/bin/node" "$work/smoke.cjs" "$addon" "$work")
ref=$(node "$work/smoke.cjs" "$x64" "$work")
echo "arm64 (qemu, $(qemu-aarch64 -L "$sysroot" "$sysroot/usr/bin/node" -p 'process.arch + " node " + process.version')): $arm"
echo "x64:   $ref"
[ "$arm" = "$ref" ] || { echo "arm64 addon disagrees with the x64 build" >&2; exit 1; }
echo "linux-arm64 addon works"
