#!/usr/bin/env bash
# Signs a cove executable (or a copy of deno) with the entitlements from
# swift-shim/cove.entitlements. CODESIGN_IDENTITY unset or "-" signs ad hoc
# (local builds); a "Developer ID Application: ..." identity signs for release,
# with the hardened runtime (V8 needs the JIT entitlements in the plist).
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${1:?usage: scripts/sign.sh EXECUTABLE}
identity=${CODESIGN_IDENTITY:--}
command -v codesign >/dev/null || { echo "sign: codesign is only on macOS" >&2; exit 1; }
opts=(--force --sign "$identity" --entitlements swift-shim/cove.entitlements)
[ "$identity" = "-" ] || opts+=(--options runtime --timestamp)
codesign "${opts[@]}" "$bin"
