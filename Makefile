# minilb: `make run-cluster` for the demo, `make test` for the tests.
.PHONY: all build test run-cluster bench compare lint fmt clean

CARGO ?= cargo

all: build

build:
	$(CARGO) build --release

## Unit tests and the integration tests that start the real binaries.
test:
	$(CARGO) test --all-targets

## Three servers of different power (0.5, 1 and 2 s) on 5071-5073 and the balancer on 5070.
run-cluster:
	scripts/run-cluster.sh

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --all-targets -- -D warnings

fmt:
	$(CARGO) fmt --all

clean:
	$(CARGO) clean

## minilb against one server directly and against HAProxy (installed if missing): one table.
## Takes a few minutes and needs ~2 GiB of temp space; not part of `make test`.
bench:
	python3 scripts/bench.py
