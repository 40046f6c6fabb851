#!/usr/bin/env bash
# make verify: the macOS binary must carry com.apple.security.virtualization.
set -euo pipefail
cd "$(dirname "$0")/.."
VERSION=$(sed -n 's/^  "version": "\(.*\)",$/\1/p' deno.json)
bin=${1:-dist/cove-${VERSION}-aarch64-apple-darwin}
[ -f "$bin" ] || { echo "verify: $bin does not exist; run 'make build' first" >&2; exit 1; }
command -v codesign >/dev/null || { echo "verify: codesign is only on macOS" >&2; exit 1; }
ents=$(codesign -d --entitlements - "$bin" 2>/dev/null)
grep -q "com.apple.security.virtualization" <<<"$ents" || {
  echo "verify: $bin lacks the com.apple.security.virtualization entitlement; sign it with scripts/sign.sh" >&2
  exit 1
}
codesign --verify --strict "$bin"
echo "verify: $bin is signed with com.apple.security.virtualization"
