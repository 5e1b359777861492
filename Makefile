# The single entry point. `make demo` and `make test` work on a fresh machine: they install PyTorch
# (libtorch for tch) into a cache folder keyed by version first, and reuse it afterwards.
SHELL := /bin/bash
TORCH_VERSION := 2.13.0
DATANET_CACHE ?= $(HOME)/.cache/datanet
VENV := $(DATANET_CACHE)/torch-$(TORCH_VERSION)

# tch builds against the venv's PyTorch; build.rs puts torch/lib on the binaries' rpath.
export VIRTUAL_ENV := $(VENV)
export PATH := $(VENV)/bin:$(HOME)/.cargo/bin:$(PATH)
export LIBTORCH_USE_PYTORCH := 1
export DATANET_PYTHON := $(VENV)/bin/python
export CARGO_TERM_COLOR ?= never
CARGO ?= cargo
BIN := $(or $(CARGO_TARGET_DIR),target)/release/datanet

.PHONY: setup test check build release demo fuzz sim-long bench-ingest bench-gossip bench-replicate \
	bench-train bench-attribution bench-agreement clean-cache

setup: $(VENV)/.torch-ok $(VENV)/.interop-ok

$(VENV)/.torch-ok $(VENV)/.interop-ok: scripts/setup.sh
	bash scripts/setup.sh --interop

build: setup
	$(CARGO) build

release: setup
	$(CARGO) build --release

check: setup
	$(CARGO) check --all-targets

test: setup
	$(CARGO) fmt --check
	$(CARGO) clippy --all-targets -- -D warnings
	$(CARGO) test --all-targets -- --test-threads=2

demo: release
	bash testnet/demo.sh $(BIN)

bench-ingest: release
	$(BIN) bench ingest --mb 200

clean-cache:
	rm -rf $(VENV)

# Swarm benchmarks (issue 3): loopback only.
bench-gossip: setup
	$(CARGO) run --release --example swarm_bench -- gossip --peers 32 --rounds 10

bench-replicate: setup
	$(CARGO) run --release --example swarm_bench -- replicate --mb 256
