# minilb: `make run-cluster` for the demo, `make test` for the tests.
.PHONY: all build test test-browser run-cluster run-cluster-tls run-hosts bench bench-tls compare lint fmt clean fuzz mutants

CARGO ?= cargo

all: build

build:
	$(CARGO) build --release

## Unit tests, the integration tests that start the real binaries (PostgreSQL's installed first
## when missing and root), and the dashboard in a browser (skipped when Chromium is not installed).
## The test binaries run three at a time (scripts/run-tests.sh): most tests wait on real
## processes, so side by side they end in less than half the time. `cargo test` runs the same
## tests one binary after another.
test:
	scripts/install-postgres.sh
	scripts/run-tests.sh
	scripts/test-browser.sh

## The dashboard in headless Chromium under load: every server shown, counters rising, timeline
## bars in every server's lane; saves target/dashboard.png.
test-browser:
	scripts/test-browser.sh

## Three servers of different power (0.5, 1 and 2 s) on 5071-5073 and the balancer on 5070;
## Ctrl-C stops them all; the script then exits 0, so make prints no error (its own status is 130).
run-cluster:
	scripts/run-cluster.sh

## The same across hosts: five network namespaces (balancer, two servers joining with a token,
## database, client) on 198.19.x.0/24; prints the commands to try from the client's host.
## Ctrl-C tears it all down. Needs root and iproute2.
run-hosts:
	scripts/run-hosts.sh
## The same with a TLS listener on 5443, its throwaway CA and certificate made at start.
run-cluster-tls:
	TLS=1 scripts/run-cluster.sh

## Mutation testing of the core (idle queue, protocol with its request reader, policies, session and
## relay); installs cargo-mutants when missing. Two passes: every mutant against the unit tests
## (seconds each), then the ones they miss against the whole suite (`--iterate`). Slow (1.5 h on
## 2 cores), so not part of `test`; the table is printed at the end, the report is in mutants.out/.
CORE_FILES = src/idle_queue.rs src/protocol.rs 'src/policy/*.rs' src/balancer/session.rs src/balancer/backend.rs
MUTATE = $(foreach f,$(CORE_FILES),--file $(f))
mutants:
	command -v cargo-mutants >/dev/null || $(CARGO) install --locked cargo-mutants
	rm -rf mutants.out mutants.out.old
	-$(CARGO) mutants $(MUTATE) --cargo-arg=--lib --timeout 60
	-$(CARGO) mutants $(MUTATE) --iterate --timeout 300 -- --all-targets
	scripts/mutants-score.sh mutants.out

## The parsers' fuzz targets, three minutes each (needs `cargo install cargo-fuzz`; not part of `test`).
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

## minilb against the servers directly and against HAProxy (installed if missing): one table,
## issues 6 and 15's workloads. About 10 minutes and ~2 GiB of temp space; not part of `make test`.
## BENCH_ONLY=workers (or small,file,many,quality,w8,unequal,seed) runs only those workloads.
bench:
	python3 scripts/bench.py

## minilb's TLS listener against HAProxy terminating TLS, same certificate and server (a few minutes).
bench-tls:
	python3 scripts/bench_tls.py

## The same load against every balancing policy, side by side, on 1-worker servers and (when
## `server` has --workers) on servers of 4 workers (about a minute).
compare:
	python3 scripts/compare.py
