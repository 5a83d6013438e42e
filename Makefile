# keyhole: the entry points. `make demo` and `make test` are all a fresh machine needs.
SHELL := /bin/bash
CARGO ?= cargo
export KEYHOLE_CACHE ?= $(HOME)/.cache/keyhole

.PHONY: all bed-deps build test unit e2e lint fmt bench demo certs clean

all: build

## Install the test bed's parts (control plane built from Go, OpenBao, moto, kubectl) into the cache.
bed-deps:
	@bash tests/bed/install.sh

build:
	$(CARGO) build --workspace --bins

## Every test: unit, golden, and end to end against the real test bed.
test: bed-deps
	$(CARGO) build --workspace --bins
	$(CARGO) test --workspace --no-fail-fast

unit:
	$(CARGO) test --workspace --lib --bins

e2e: bed-deps
	$(CARGO) build --workspace --bins
	$(CARGO) test --workspace --test 'e2e*'

lint:
	$(CARGO) fmt --all --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

fmt:
	$(CARGO) fmt --all

## Benchmarks: prints the figures the issues ask for (release build).
bench:
	@KEYHOLE_BENCH_TOOLS=1 bash tests/bed/install.sh
	$(CARGO) build --release --workspace --bins
	$(CARGO) run --release -p keyhole-testbed --bin keyhole-bench
	KEYHOLE_BENCH_BIN=$(CURDIR)/target/release/keyhole-injector $(CARGO) test --release -p keyhole-testbed --test e2e_injector -- bench --nocapture
	KEYHOLE_ROLLOUT_REPLICAS=50 $(CARGO) test --release -p keyhole-testbed --test e2e_secret -- bench --nocapture

## The main job end to end on the local control plane.
demo: bed-deps
	$(CARGO) build --workspace --bins
	$(CARGO) run -p keyhole-testbed --bin keyhole-bed -- demo

## A CA and the webhook's serving certificate, written into certs/out/.
certs:
	@bash certs/make-certs.sh

clean:
	$(CARGO) clean
