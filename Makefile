# minilb: `make run-cluster` for the demo, `make test` for the tests.
.PHONY: all build test test-browser run-cluster run-cluster-tls bench-tls bench compare lint fmt clean fuzz mutants

CARGO ?= cargo

all: build

build:
	$(CARGO) build --release

## Unit tests, the integration tests that start the real binaries, and the dashboard in a
## browser (skipped with a message when Chromium is not installed).
test:
	$(CARGO) test --all-targets
	scripts/test-browser.sh

## The dashboard in headless Chromium under load: every server shown, counters rising, timeline
## bars in every server's lane; saves target/dashboard.png.
test-browser:
	scripts/test-browser.sh

## Three servers of different power (0.5, 1 and 2 s) on 5071-5073 and the balancer on 5070;
## Ctrl-C stops them all; the script then exits 0, so make prints no error (its own status is 130).
run-cluster:
	scripts/run-cluster.sh

## The same with a TLS listener on 5443, its throwaway CA and certificate made at start.
run-cluster-tls:
	TLS=1 scripts/run-cluster.sh

## The parsers' fuzz targets, three minutes each (needs `cargo install cargo-fuzz`; not part of `test`).
## Mutation testing of the core (idle queue, protocol, request reader, policies, session and
## relay) against the whole test suite; installs cargo-mutants when missing. Slow (an hour or
## more on 2 cores), so not part of `test`; the report lands in mutants.out/.
CORE_FILES = src/idle_queue.rs src/protocol.rs src/request_reader.rs 'src/policy/*.rs' src/balancer/session.rs
mutants:
	command -v cargo-mutants >/dev/null || $(CARGO) install --locked cargo-mutants
	$(CARGO) mutants $(foreach f,$(CORE_FILES),--file $(f)) --timeout 120 -- --all-targets

fuzz:
	RUSTC_BOOTSTRAP=1 $(CARGO) fuzz run request_line -- -max_total_time=180
	RUSTC_BOOTSTRAP=1 $(CARGO) fuzz run reply_header -- -max_total_time=180
	RUSTC_BOOTSTRAP=1 $(CARGO) fuzz run join_body -- -max_total_time=180

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

## minilb's TLS listener against HAProxy terminating TLS, same certificate and server (a few minutes).
bench-tls:
	python3 scripts/bench_tls.py

## The same load against every balancing policy, side by side (about half a minute).
compare:
	python3 scripts/compare.py
