#!/usr/bin/env bash
# make demo: builds the tiny Debian guest, creates a VM with cove, boots it,
# shows the guest's own `uname -a`, stops it through ACPI. See demo/main.ts.
set -euo pipefail
cd "$(dirname "$0")/.."
exec "$(scripts/deno-path.sh)" run -A demo/main.ts "$@"
