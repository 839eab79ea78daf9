#!/usr/bin/env bash
# Packs moekit for a machine that cannot reach a package registry (a cluster's compute nodes):
# one tarball with the built package and its runtime dependencies bundled inside it
# (npm's bundleDependencies), so `npm i -g ./moekit-<version>-offline-<platform>.tgz --offline`
# installs it with no network. Only this platform's Dawn binary is kept (the webgpu package ships
# five; they are most of its size).
#   bash scripts/pack-offline.sh [destination folder, default .]
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
dest=$(cd "${1:-.}" && pwd)
cd "$root"
[ -f dist/src/cli/index.js ] || npx tsc -p tsconfig.json
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
# what `npm pack` would ship (package.json "files"), plus the lock file for an exact install
cp -r bin dist kernels README.md package.json package-lock.json "$stage/"
rm -rf "$stage/dist/test" "$stage/dist/bench" "$stage/dist/fuzz"
cd "$stage"
npm ci --omit=dev --ignore-scripts --no-audit --no-fund >/dev/null
platform="$(node -p 'process.platform')-$(node -p 'process.arch')"
keep=$platform
case $platform in darwin-*) keep=darwin-universal ;; esac
for d in node_modules/webgpu/dist/*/; do [ "$(basename "$d")" = "$keep" ] || rm -rf "$d"; done
[ -n "$(ls node_modules/webgpu/dist)" ] || { echo "pack-offline: no Dawn binary for $platform in the webgpu package" >&2; exit 1; }
# bundle every runtime dependency; drop the prepack build (dist/ is already here) and the lock file
node -e '
  const fs = require("fs");
  const p = JSON.parse(fs.readFileSync("package.json", "utf8"));
  p.bundleDependencies = Object.keys(p.dependencies);
  delete p.scripts.prepack; delete p.scripts.prepare;
  p.files = [...p.files, "node_modules/"];
  fs.writeFileSync("package.json", JSON.stringify(p, null, 2) + "\n");'
rm package-lock.json
name=$(npm pack --silent --ignore-scripts | tail -n1)
version=$(node -p 'require("./package.json").version')
out="$dest/moekit-$version-offline-$platform.tgz"
mv "$name" "$out"
echo "$out"
