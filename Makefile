# SPDX-License-Identifier: GPL-2.0-only
# ebpfw developer entry points. `make test` and `make demo` install what they need.

VENV    ?= .venv
PY      := $(VENV)/bin/python
BUILD   ?= build
CLANG   ?= clang
OPT     ?= opt
LLC     ?= llc
DIS     ?= llvm-dis
STRIP   ?= llvm-strip
MULTIARCH := $(shell gcc -print-multiarch 2>/dev/null || echo $$(uname -m)-linux-gnu)

APT_PKGS := clang llvm libbpf-dev bpftool linux-libc-dev gcc iproute2 nftables conntrack \
            ethtool iperf3 shellcheck iputils-ping python3-venv python3-dev \
            iptables tcpdump chromium chromium-driver nodejs
# the apt list is part of the stamp: a package added there is installed on the next run
DEPS_STAMP := $(VENV)/.deps-$(shell (cat pyproject.toml; echo $(APT_PKGS)) | cksum | cut -d' ' -f1)

BPF_SRC  := bpf/ebpfw.c
BPF_HDRS := $(wildcard bpf/*.h bpf/include/ebpfw/*.h)
# the Python that renders the DSA headers (jinja2): the venv's once it exists
PYTHON   ?= $(if $(wildcard $(PY)),$(PY),python3)
DSA_TAGS := $(shell PYTHONPATH=src $(PYTHON) -m fw_ebpf.dsa names 2>/dev/null)
DSA_HDRS := $(foreach t,$(DSA_TAGS),$(BUILD)/dsa/dsa-$(t).h)
BPF_OBJS := $(foreach e,le be,$(BUILD)/ebpfw-$(e).o $(foreach t,$(DSA_TAGS),$(BUILD)/ebpfw-$(t)-$(e).o))

# OpenWrt's include/bpf.mk, CompileBPF: clang emits bitcode for the mips target of the byte
# order, opt -O2 -mtriple=bpfe?, llvm-dis, llc -mcpu=v3, the object kept as .debug.o and
# stripped of DWARF. The SDK's bpf-headers are replaced by the host's uapi headers (and the
# compiler's own for -nostdinc); bpf.mk's -include of kconfig.h / asm_goto_workaround.h
# needs a kernel tree and is left out. mips64: bpf.mk's 32-bit mips frontend truncates
# packet pointers (the verifier rejects the object), so the feed sets BPF_ARCH to mips64
# as well (openwrt-feed/ebpfw/Makefile).
BPF_ARCH_le   := mips64el
BPF_ARCH_be   := mips64
BPF_TARGET_le := bpfel
BPF_TARGET_be := bpfeb
BPF_ENDIAN_le := little
BPF_ENDIAN_be := big
# read when a recipe runs, not when make starts: on a fresh machine `deps` installs clang first
CLANG_RES      = $(shell $(CLANG) -print-resource-dir 2>/dev/null)
BPF_INCLUDE    = -nostdinc -isystem $(CLANG_RES)/include -I/usr/include/$(MULTIARCH) -I/usr/include
bpf_cflags = $(BPF_INCLUDE) -D__KERNEL__ -D__BPF_TRACING__ -DCONFIG_GENERIC_CSUM \
	-D__TARGET_ARCH_mips -m$(BPF_ENDIAN_$(1))-endian -fno-stack-protector -Wall \
	-Wno-unused-value -Wno-pointer-sign -Wno-compare-distinct-pointer-types \
	-Wno-gnu-variable-sized-type-not-at-end -Wno-address-of-packed-member \
	-Wno-tautological-compare -Wno-unknown-warning-option -fno-asynchronous-unwind-tables \
	-Wno-uninitialized -Wno-unused-variable -Wno-unused-label \
	-O2 -emit-llvm -Xclang -disable-llvm-passes
# what the package passes as CompileBPF's second argument
EBPFW_CFLAGS := -Werror -Ibpf -Ibpf/include -I$(BUILD)/dsa

# $(1) source, $(2) object (without .o), $(3) le|be, $(4) extra flags
define compile_bpf
	$(CLANG) -g -target $(BPF_ARCH_$(3))-linux-gnu $(call bpf_cflags,$(3)) $(EBPFW_CFLAGS) $(4) \
		-c $(1) -o $(2).bc
	$(OPT) -O2 -mtriple=$(BPF_TARGET_$(3)) < $(2).bc > $(2).opt
	$(DIS) < $(2).opt > $(2).S
	$(LLC) -march=$(BPF_TARGET_$(3)) -mcpu=v3 -filetype=obj -o $(2).o < $(2).S
	cp $(2).o $(2).debug.o
	$(STRIP) --strip-debug $(2).o
	rm -f $(2).bc $(2).opt $(2).S
endef

.PHONY: all deps bpf test demo bench soak clean
all: bpf

deps: $(DEPS_STAMP)
$(DEPS_STAMP): pyproject.toml
	@missing=""; for p in $(APT_PKGS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
		echo "installing:$$missing"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	fi
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	rm -f $(VENV)/.deps-*; touch $@

bpf: $(BPF_OBJS)
	@echo "BPF objects: $(notdir $(BPF_OBJS))"

# one header per DSA tag, rendered from bpf/dsa/tag.h.j2 with the table in src/fw_ebpf/dsa.py
$(DSA_HDRS) &: bpf/dsa/tag.h.j2 src/fw_ebpf/dsa.py | $(BUILD)
	PYTHONPATH=src $(PYTHON) -m fw_ebpf.dsa render $(BUILD)/dsa

$(BUILD)/ebpfw-le.o $(BUILD)/ebpfw-be.o: $(BUILD)/ebpfw-%.o: $(BPF_SRC) $(BPF_HDRS) | $(BUILD)
	$(call compile_bpf,$<,$(BUILD)/ebpfw-$*,$*,)

define tag_objects
$(foreach e,le be,$(BUILD)/ebpfw-$(1)-$(e).o): $(BUILD)/ebpfw-$(1)-%.o: $(BPF_SRC) $(BPF_HDRS) \
		$(BUILD)/dsa/dsa-$(1).h | $(BUILD)
	$$(call compile_bpf,$$<,$(BUILD)/ebpfw-$(1)-$$*,$$*,-DEBPFW_DSA_TAG='"dsa-$(1).h"')
endef
$(foreach t,$(DSA_TAGS),$(eval $(call tag_objects,$(t))))

$(BUILD):
	mkdir -p $@

test: deps bpf
	$(PY) -m pytest -q tests

demo: deps bpf
	$(PY) tests/demo.py

# Benchmarks (issue #5): JSON + plots in bench/results/, docs/BENCHMARKS.md; about 35 minutes
bench: deps bpf
	$(PY) -m pip install -q -e '.[bench,test]'
	$(PY) bench/run.py

# The soak alone with more rounds than `make bench` has, then the long fuzz budget (issue #10);
# about an hour
SOAK_ROUNDS ?= 40
SOAK_CONNECTIONS ?= 5000
soak: deps bpf
	$(PY) -m pip install -q -e '.[bench,test]'
	EBPFW_SOAK_ROUNDS=$(SOAK_ROUNDS) EBPFW_SOAK_CONNECTIONS=$(SOAK_CONNECTIONS) \
		$(PY) bench/run.py soak fuzz

clean:
	rm -rf $(BUILD) .pytest_cache
