# SPDX-License-Identifier: GPL-2.0-only
# ebpfw developer entry points. `make test` and `make demo` install what they need.

VENV    ?= .venv
PY      := $(VENV)/bin/python
BUILD   ?= build
CLANG   ?= clang
OPT     ?= opt
LLC     ?= llc
STRIP   ?= llvm-strip
MULTIARCH := $(shell gcc -print-multiarch 2>/dev/null || echo $$(uname -m)-linux-gnu)

APT_PKGS := clang llvm libbpf-dev bpftool linux-libc-dev gcc iproute2 nftables conntrack \
            ethtool iperf3 shellcheck iputils-ping python3-venv python3-dev \
            iptables chromium chromium-driver nodejs
# the apt list is part of the stamp: a package added there is installed on the next run
DEPS_STAMP := $(VENV)/.deps-$(shell (cat pyproject.toml; echo $(APT_PKGS)) | cksum | cut -d' ' -f1)

BPF_SRC  := bpf/ebpfw.c
BPF_HDRS := $(wildcard bpf/*.h bpf/include/ebpfw/*.h)
BPF_OBJS := $(BUILD)/ebpfw-le.o $(BUILD)/ebpfw-be.o

# Same pipeline as OpenWrt's include/bpf.mk: clang -> bitcode, opt -O2, llc -mcpu=v3,
# keep the unstripped object as .debug.o and ship the one without DWARF.
BPF_CFLAGS := -g -O2 -Wall -Werror -emit-llvm -Xclang -disable-llvm-passes \
              -fno-stack-protector -Ibpf -Ibpf/include -I/usr/include/$(MULTIARCH)

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
$(BUILD)/ebpfw-%.o: $(BPF_SRC) $(BPF_HDRS) | $(BUILD)
	$(CLANG) -target bpf$(subst le,el,$(subst be,eb,$*)) $(BPF_CFLAGS) -c $< -o $(BUILD)/ebpfw-$*.bc
	$(OPT) -O2 -mtriple=bpf$(subst le,el,$(subst be,eb,$*)) $(BUILD)/ebpfw-$*.bc -o $(BUILD)/ebpfw-$*.opt.bc
	$(LLC) -march=bpf$(subst le,el,$(subst be,eb,$*)) -mcpu=v3 -filetype=obj $(BUILD)/ebpfw-$*.opt.bc -o $(BUILD)/ebpfw-$*.debug.o
	$(STRIP) --strip-debug $(BUILD)/ebpfw-$*.debug.o -o $@
	rm -f $(BUILD)/ebpfw-$*.bc $(BUILD)/ebpfw-$*.opt.bc

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
