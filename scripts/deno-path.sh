#!/usr/bin/env bash
# Prints the deno to use: the project's pinned copy in .tools/, else `deno` on PATH.
cd "$(dirname "$0")/.."
if [ -x .tools/node_modules/.bin/deno ]; then
  echo "$PWD/.tools/node_modules/.bin/deno"
else
  command -v deno || echo deno
fi
