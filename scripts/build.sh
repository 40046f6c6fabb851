#!/usr/bin/env bash
# make build: compile cove into single executables under dist/.
#   dist/cove-VERSION-aarch64-apple-darwin   (vz + qemu; embeds libcove_vz.dylib; signed)
#   dist/cove-VERSION-x86_64-unknown-linux-gnu, -aarch64-unknown-linux-gnu (qemu engine)
# TARGETS overrides the list; DIST_DIR the output directory (default dist). Everything that can be checked before deno compile
# downloads its runtime (type-check, the include list) is checked first; where the
# runtime cannot be downloaded, the build stops with one line saying so.
set -euo pipefail
cd "$(dirname "$0")/.."
DENO=$(scripts/deno-path.sh)
VERSION=$(sed -n 's/^  "version": "\(.*\)",$/\1/p' deno.json)
[ -n "$VERSION" ] || { echo "build: cannot read the version from deno.json" >&2; exit 1; }
TARGETS=${TARGETS:-"aarch64-apple-darwin x86_64-unknown-linux-gnu aarch64-unknown-linux-gnu"}
DYLIB=${COVE_VZ_DYLIB:-swift-shim/.build/release/libcove_vz.dylib}
ENTITLEMENTS=swift-shim/cove.entitlements

echo "build: type-checking" >&2
"$DENO" check cli/main.ts mod.ts

# Files loaded at run time that deno compile does not find by itself:
# module workers started with new Worker(new URL(...)).
WORKERS=(core/oci/layer_worker.ts)
for f in "${WORKERS[@]}"; do
  [ -f "$f" ] || { echo "build: include list: $f is missing" >&2; exit 1; }
done

DIST=${DIST_DIR:-dist}
mkdir -p "$DIST"
for target in $TARGETS; do
  out="$DIST/cove-${VERSION}-${target}"
  include=()
  for f in "${WORKERS[@]}"; do include+=(--include "$f"); done
  if [[ $target == *apple-darwin ]]; then
    if [ -f "$DYLIB" ]; then
      include=(--include "$DYLIB")
    elif [ "$(uname -s)" = Darwin ]; then
      echo "build: $DYLIB is missing; build it first with 'make shim'" >&2
      exit 1
    else
      echo "build: note: $target is built without libcove_vz.dylib (Swift builds only on macOS); its vz engine will report the library missing" >&2
    fi
  fi
  [ ! -f "$ENTITLEMENTS" ] && { echo "build: $ENTITLEMENTS is missing" >&2; exit 1; }
  echo "build: compiling $out" >&2
  log=$(mktemp)
  if ! "$DENO" compile -A --no-check --target "$target" --output "$out" "${include[@]}" cli/main.ts >"$log" 2>&1; then
    if grep -qE "dl\.deno\.land|error sending request|dns error|Setting up base binary" "$log"; then
      echo "build: deno compile could not download the Deno runtime for $target (this machine cannot reach dl.deno.land); type-check and include list passed. Build on a machine with internet access." >&2
    else
      cat "$log" >&2
    fi
    rm -f "$log"
    exit 1
  fi
  rm -f "$log"
  if [[ $target == *apple-darwin ]] && [ "$(uname -s)" = Darwin ]; then
    # deno compile replaces the signature; sign again with the entitlement every time.
    scripts/sign.sh "$out"
  fi
  echo "$out"
done
