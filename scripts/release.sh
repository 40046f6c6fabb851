#!/usr/bin/env bash
# Renders the Homebrew formula for a release: fills packaging/homebrew/cove.rb.template
# with the version, the download url of each dist/ asset and its sha256.
#   scripts/release.sh BASE_URL [OUT]
# BASE_URL is where the assets are downloadable, e.g.
#   https://github.com/cove-vm/cove/releases/download/v0.1.0
# OUT defaults to dist/cove.rb.
set -euo pipefail
cd "$(dirname "$0")/.."
base=${1:?usage: scripts/release.sh BASE_URL [OUT]}
out=${2:-dist/cove.rb}
VERSION=$(sed -n 's/^  "version": "\(.*\)",$/\1/p' deno.json)
sha() { if command -v sha256sum >/dev/null; then sha256sum "$1" | cut -d' ' -f1; else shasum -a 256 "$1" | cut -d' ' -f1; fi; }
args=(-e "s|@VERSION@|${VERSION}|g")
for target in aarch64-apple-darwin x86_64-unknown-linux-gnu aarch64-unknown-linux-gnu; do
  asset="${DIST_DIR:-dist}/cove-${VERSION}-${target}"
  [ -f "$asset" ] || { echo "release: $asset is missing; run 'make build' first" >&2; exit 1; }
  key=$(tr 'a-z-' 'A-Z_' <<<"$target")
  args+=(-e "s|@URL_${key}@|${base}/cove-${VERSION}-${target}|g" -e "s|@SHA256_${key}@|$(sha "$asset")|g")
done
mkdir -p "$(dirname "$out")"
sed "${args[@]}" packaging/homebrew/cove.rb.template >"$out"
if grep -q "@[A-Z0-9_]*@" "$out"; then
  echo "release: unfilled placeholders remain in $out" >&2
  exit 1
fi
echo "$out"
