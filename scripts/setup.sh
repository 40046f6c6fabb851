#!/usr/bin/env bash
# Idempotent setup for developing and testing cove on a fresh machine.
#  - Debian/Ubuntu: installs the apt packages listed in .ci/apt-packages.txt
#    (only the missing ones; needs root or sudo).
#  - Everywhere: makes the pinned Deno available. A `deno` on PATH of exactly
#    the pinned version is used as is; otherwise Deno is installed from the
#    npm registry (package `deno`) into .tools/.
set -euo pipefail
cd "$(dirname "$0")/.."
DENO_VERSION=$(sed -n 's/.*"deno": "\([0-9.]*\)".*/\1/p' .tools/package.json)

if command -v apt-get >/dev/null 2>&1 && [ -f .ci/apt-packages.txt ]; then
  mapfile -t wanted < <(grep -v '^\s*#' .ci/apt-packages.txt | sed 's/\s//g' | grep -v '^$' | sort -u)
  missing=()
  for p in "${wanted[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    echo "setup: installing apt packages: ${missing[*]}" >&2
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
  fi
fi

have_deno() {
  "$1" --version 2>/dev/null | head -1 | grep -q "^deno ${DENO_VERSION} "
}
if have_deno .tools/node_modules/.bin/deno; then
  :
elif command -v deno >/dev/null 2>&1 && have_deno "$(command -v deno)"; then
  :
else
  echo "setup: installing deno ${DENO_VERSION} from the npm registry into .tools/" >&2
  (cd .tools && npm install --no-audit --no-fund --loglevel=error >&2)
  have_deno .tools/node_modules/.bin/deno || {
    echo "setup: deno ${DENO_VERSION} did not install; check access to the npm registry" >&2
    exit 1
  }
fi
# Fetch the npm dependencies pinned in deno.lock so tests run offline-safe.
"$(scripts/deno-path.sh)" install --frozen >&2
