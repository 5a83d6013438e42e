# keyhole: the entry points. `make demo` and `make test` are all a fresh machine needs.
SHELL := /bin/bash
CARGO ?= cargo
export KEYHOLE_CACHE ?= $(HOME)/.cache/keyhole
# keyhole_build_info{commit}: read at compile time, the same for every target so
# that no target rebuilds what another built.
export KEYHOLE_COMMIT ?= $(shell git rev-parse --short=12 HEAD 2>/dev/null || echo unknown)
# One build for every target: the same packages, targets and features each time,
# so `make demo` after `make test` (or the reverse) builds nothing again. Test
# targets are in it because their dev-dependencies change the features of shared
# crates; a narrower build here would make the next `cargo test` rebuild those.
BUILD := $(CARGO) build --workspace --all-targets
# keyhole's image binary (Containerfile, and the bed's node imports the same layout).
IMAGE_BUILD := $(CARGO) build --profile image -p keyhole-cli --bin keyhole
BIN := $(CURDIR)/target/debug

.PHONY: all bed-deps build image test unit e2e lint fmt bench fuzz demo certs clean

all: build

## Install the test bed's parts (control plane built from Go, OpenBao, moto, kubectl) into the cache.
bed-deps:
	@bash tests/bed/install.sh

build:
	$(BUILD)

## keyhole's multi-call binary for the image (target/image/keyhole); the image
## itself: `docker build -f Containerfile .` (or podman/buildah).
image:
	$(IMAGE_BUILD)

## Every test: unit, golden, and end to end against the real test bed.
test: bed-deps
	$(BUILD)
	$(IMAGE_BUILD)
	$(CARGO) test --workspace --no-fail-fast

## Every test that needs no test bed: unit, golden, TLS reload.
unit:
	$(BUILD)
	$(CARGO) test --workspace --no-fail-fast --lib --bins --test golden --test hostile --test limits --test tls_reload

e2e: bed-deps
	$(BUILD)
	$(IMAGE_BUILD)
	$(CARGO) test --workspace --no-fail-fast --test 'e2e*'

lint:
	$(CARGO) fmt --all --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	@# The admission server links no backend SDK, controller runtime or injector.
	@! $(CARGO) tree -p keyhole-webhook -e normal --prefix none | grep -E '^(aws-[a-z-]+|vaultrs|kube-runtime|kube-client|keyhole-(injector|backends|rotation)) ' \
	  || { echo "keyhole-webhook must not depend on the crates above (docs/decisions.md, Layout)"; exit 1; }

fmt:
	$(CARGO) fmt --all

## Benchmarks: prints the figures the issues ask for (release build).
bench:
	@KEYHOLE_BENCH_TOOLS=1 bash tests/bed/install.sh
	$(CARGO) build --release --workspace --bins
	$(CARGO) run --release -p keyhole-testbed --bin keyhole-bench
	KEYHOLE_BENCH_BIN=$(CURDIR)/target/release/keyhole-injector $(CARGO) test --release -p keyhole-testbed --test e2e_injector -- bench --nocapture
	KEYHOLE_ROLLOUT_REPLICAS=50 $(CARGO) test --release -p keyhole-testbed --test e2e_secret -- bench --nocapture
	$(IMAGE_BUILD)
	KEYHOLE_POD_START_ROUNDS=10 $(CARGO) test --release -p keyhole-testbed --test e2e_node -- bench --nocapture

## The webhook's fuzz target (fuzz/, libFuzzer on the nightly toolchain) for
## FUZZ_SECONDS, its corpus seeded from the golden pods. Crashes land in
## fuzz/artifacts/review/.
FUZZ_SECONDS ?= 60
fuzz:
	@command -v cargo-fuzz >/dev/null || $(CARGO) install cargo-fuzz --locked
	python3 fuzz/seed.py fuzz/corpus/review
	$(CARGO) +nightly fuzz run review fuzz/corpus/review -- -dict=fuzz/review.dict \
	  -max_total_time=$(FUZZ_SECONDS) -max_len=65536 -rss_limit_mb=2048 -print_final_stats=1

## The main job end to end on the local cluster's real node, keyhole from its image.
demo: bed-deps
	$(BUILD)
	$(IMAGE_BUILD)
	$(BIN)/keyhole-bed demo

## A CA and the webhook's serving certificate, written into certs/out/.
certs:
	@bash certs/make-certs.sh

clean:
	$(CARGO) clean
