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

.PHONY: setup browser test check build release demo fuzz sim-long bench-ingest bench-gossip bench-replicate \
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

# The status-page test drives a headless chromium when one is installed (skips without).
browser:
	@bash scripts/setup.sh --browser

test: setup browser
	$(CARGO) fmt --check
	$(CARGO) clippy --all-targets -- -D warnings
	$(CARGO) test --all-targets -- --test-threads=2

# The demo uses the dev build (dependencies are optimized in it too), shared with `make test`.
demo: build
	bash testnet/demo.sh $(or $(CARGO_TARGET_DIR),target)/debug/datanet

bench-ingest: release
	$(BIN) bench ingest --mb 200

clean-cache:
	rm -rf $(VENV)

# Swarm benchmarks (issue 3): loopback only.
bench-gossip: setup
	$(CARGO) run --release --example swarm_bench -- gossip --peers 32 --rounds 10

bench-replicate: setup
	$(CARGO) run --release --example swarm_bench -- replicate --mb 256

# DatanetBench (attribution quality, DESIGN.md §10): every scenario in testnet/bench/, 5 seeds each;
# each run ends with a `RESULT scenario=… pass=…` line. `make test` runs a reduced S2 (tabular and
# text), S3 and S5. The text S2 uses its built-in corpus (`generator`), shown as data `-`.
BENCH_DATA := tests/data
bench-attribution: release
	@set -e; mkdir -p target; rm -f target/bench-attribution.log; for run in \
		"s1-spearman.toml breast_cancer.csv" "s2-curated-vs-volume.toml digits.csv.gz" \
		"s2-text-curated-vs-volume.toml -" \
		"s3-duplication.toml breast_cancer.csv" "s4-near-duplicates.toml breast_cancer.csv" \
		"s5-sybil.toml breast_cancer.csv" "s5-sybil.toml digits.csv.gz" "s5-sybil-wine.toml wine.csv" \
		"s6-label-flips.toml breast_cancer.csv" "s6-label-flips.toml digits.csv.gz" \
		"s8-outliers.toml breast_cancer.csv" "s9-overlap.toml breast_cancer.csv" "s11-cost.toml breast_cancer.csv" \
		"s12-stability.toml digits.csv.gz" "s12-text-stability.toml -" "s13-backdating.toml breast_cancer.csv" \
		"s14-id-grinding-flood.toml breast_cancer.csv" "s15-sealed-eval.toml -"; do \
		set -- $$run; echo "== $$1 on $$2"; data=; [ "$$2" = - ] || data="--data $(BENCH_DATA)/$$2"; \
		$(BIN) bench attribution --scenario testnet/bench/$$1 $$data | tee -a target/bench-attribution.log; \
	done; grep '^RESULT' target/bench-attribution.log | tail -n 18

# Epoch agreement: 5,000 simulator seeds (n = 4, 7, 16 with f Byzantine and network faults).
sim-long: release
	$(BIN) sim --peers 4 --seeds 2000
	$(BIN) sim --peers 7 --seeds 2000
	$(BIN) sim --peers 16 --seeds 1000

# Epoch agreement: certificate verification (21 signers) and last reveal → certificate (n = 7, 31; 50 ms links).
bench-agreement: release
	$(BIN) sim --bench

# LoRA training throughput: the project vs Python PyTorch + PEFT on the same base, adapter init,
# data and threads (llama tiny: 4 layers, d=256, seq 256, batch 8, rank 8 on q,k,v,o).
BENCH_TRAIN_STEPS ?= 20
BENCH_TRAIN_THREADS ?= $(shell nproc)
BENCH_TRAIN_DEVICE ?= cpu
BENCH_TRAIN_DIR ?= $(or $(CARGO_TARGET_DIR),target)/bench-train
bench-train: release
	$(BIN) model bench-train --out $(BENCH_TRAIN_DIR) --steps $(BENCH_TRAIN_STEPS) \
		--threads $(BENCH_TRAIN_THREADS) --device $(BENCH_TRAIN_DEVICE)
	$(DATANET_PYTHON) benches/train_peft.py $(BENCH_TRAIN_DIR)

# Each fuzz target runs FUZZ_SECONDS (default 300). cargo-fuzz is installed on first use; the
# stable toolchain is used with RUSTC_BOOTSTRAP for the sanitizer flags. The fuzz binaries are
# another package (no rpath from build.rs), so torch/lib goes on LD_LIBRARY_PATH. Each run starts
# from the local corpus (fuzz/corpus/<target>, not committed) plus the committed real encodings in
# fuzz/seeds/<target> where there are some (a demo attestation for decode_certificates).
FUZZ_SECONDS ?= 300
FUZZ_TARGETS := decode_envelopes decode_manifest decode_epoch decode_certificates decode_proofs decode_catchup admit_records
fuzz: setup
	command -v cargo-fuzz >/dev/null || $(CARGO) install cargo-fuzz --locked
	export LD_LIBRARY_PATH="$$($(DATANET_PYTHON) -c 'import os, torch; print(os.path.join(os.path.dirname(torch.__file__), "lib"))')"; \
	cd fuzz && for t in $(FUZZ_TARGETS); do mkdir -p corpus/$$t; \
		RUSTC_BOOTSTRAP=1 $(CARGO) fuzz run $$t corpus/$$t $$(test -d seeds/$$t && echo seeds/$$t) \
			-- -max_total_time=$(FUZZ_SECONDS) -rss_limit_mb=4096 \
			-print_final_stats=1 || exit 1; done
