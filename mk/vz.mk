# mk/vz.mk: the Virtualization.framework engine's targets (included by the Makefile).
#   make shim       build swift-shim/.build/release/libcove_vz.dylib (macOS only)
#   make shim-debug the same, debug build (.build/debug/)
#   make sign-dev   ad-hoc sign a COPY of deno with swift-shim/cove.entitlements,
#                   to run cove from source with VZ: swift-shim/.build/deno-signed
#   make test-vz    the vz tests that run anywhere (C test double, drift, golden)
#   make test-vz-real  on macOS: the same against the real dylib, config validation only
VZ_DENO ?= $(shell scripts/deno-path.sh)
SHIM_DIR := swift-shim
SHIM_LIB := $(SHIM_DIR)/.build/release/libcove_vz.dylib
DEV_DENO := $(SHIM_DIR)/.build/deno-signed

.PHONY: shim shim-debug sign-dev test-vz test-vz-real

shim:
	@[ "$$(uname -s)" = Darwin ] || { echo "make shim: Swift and Virtualization.framework build only on macOS (on Linux, make test-vz uses the C test double)" >&2; exit 1; }
	swift build -c release --package-path $(SHIM_DIR)
	@test -f $(SHIM_LIB) && echo "built $(SHIM_LIB)"

shim-debug:
	@[ "$$(uname -s)" = Darwin ] || { echo "make shim-debug: macOS only" >&2; exit 1; }
	swift build -c debug --package-path $(SHIM_DIR)

# Never re-sign the installed deno: sign a copy next to the dylib.
sign-dev: setup
	@[ "$$(uname -s)" = Darwin ] || { echo "make sign-dev: codesign is macOS only" >&2; exit 1; }
	@mkdir -p $(dir $(DEV_DENO))
	cp -f "$(VZ_DENO)" $(DEV_DENO)
	scripts/sign.sh $(DEV_DENO)
	@codesign -d --entitlements - $(DEV_DENO) 2>/dev/null | grep -q com.apple.security.virtualization \
	  || { echo "sign-dev: the entitlement is missing after signing" >&2; exit 1; }
	@echo "run cove from source with VZ: $(DEV_DENO) run -A cli/main.ts ..."

test-vz: setup
	$(VZ_DENO) test -A tests/ffi/ tests/unit/abi_drift_test.ts tests/unit/shim_sdk_facts_test.ts tests/unit/vz_config_test.ts tests/unit/vz_preflight_test.ts tests/unit/vz_spec_agreement_test.ts

test-vz-real: shim sign-dev
	COVE_VZ_REAL=1 COVE_VZ_LIBRARY=$(CURDIR)/$(SHIM_LIB) $(DEV_DENO) test -A tests/ffi/vz_real_test.ts tests/unit/abi_drift_test.ts tests/unit/vz_config_test.ts tests/unit/vz_preflight_test.ts
