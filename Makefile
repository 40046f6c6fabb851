# cove: developer entry points. Every target runs the idempotent setup first,
# so `make demo` and `make test` work as the very first command on a fresh machine.
SHELL := /bin/bash
DENO = $(shell scripts/deno-path.sh)
TEST_FLAGS ?=

.PHONY: setup test check fmt demo bench build verify release clean

setup:
	@scripts/setup.sh

test: setup
	$(DENO) test -A $(TEST_FLAGS) tests/

check: setup
	$(DENO) fmt --check
	$(DENO) lint
	$(DENO) check mod.ts cli/main.ts tests/ bench/ demo/ scripts/

fmt: setup
	$(DENO) fmt

demo: setup
	@demo/demo.sh

bench: setup
	$(DENO) run -A bench/boot/main.ts
	$(DENO) run -A bench/qcow2/main.ts
	$(DENO) run -A bench/oci/main.ts
	$(DENO) run -A bench/cli/main.ts
	$(DENO) run -A bench/agent/main.ts
	$(DENO) run -A bench/job/main.ts

build: setup
	@scripts/build.sh

verify:
	@scripts/verify.sh

# make release BASE_URL=https://github.com/OWNER/cove/releases/download/vX.Y.Z
release:
	@scripts/release.sh "$(BASE_URL)"

clean:
	rm -rf dist tests/.cache

-include mk/*.mk
