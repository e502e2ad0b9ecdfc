#!/usr/bin/env bash
# make test's cargo part: builds what `cargo test --all-targets` builds, then runs its test
# binaries several at a time (TEST_JOBS, 3 by default) instead of one after another. Most tests
# wait on real processes and timeouts (one after another, the suite takes 75 s for 25 s of CPU
# on two cores), so side by side it ends in about 30 s. Each binary's output is printed whole
# when it ends; the exit status is 1 if any binary failed, and the failed ones are named last.
set -euo pipefail
cd "$(dirname "$0")/.."
jobs=${TEST_JOBS:-3}
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT

# The executables, longest first (by last run's time, kept in target/), so that a long binary
# does not start last and leave the other slots idle.
# Test harnesses end in a hash; the programs they test (target/debug/server...) do not.
cargo test --all-targets --no-run --message-format=json-render-diagnostics |
  grep -o '"executable":"[^"]*"' | cut -d'"' -f4 |
  grep -E -- '-[0-9a-f]{16}$' >"$out/binaries" || {
  echo "make test: the build failed, or built no test binary" >&2
  exit 1
}
mkdir -p target
times=target/test-times
touch "$times"
while read -r bin; do
  name=$(basename "$bin" | sed 's/-[0-9a-f]*$//')
  echo "$(awk -v n="$name" '$1 == n { print $2 }' "$times" | tail -1) ${bin}"
done <"$out/binaries" | sort -rn | cut -d' ' -f2- >"$out/order"

run_one() {
  local bin=$1 out=$2 name start status=0 ms
  name=$(basename "$bin")
  start=$(date +%s%3N)
  "$bin" >"$out/$name.log" 2>&1 || status=$?
  ms=$(($(date +%s%3N) - start))
  echo "${name%-*} $ms" >>"$out/times"
  # A crash (a signal) counts no test as failed: the binary is named with its exit status.
  [ "$status" = 0 ] || echo "${name%-*} (exit $status)" >>"$out/failed"
  # One binary's output at a time, whole.
  flock "$out/print" sh -c 'echo "---- $1 ($2 ms, exit $3)"; cat "$4"' _ "${name%-*}" "$ms" "$status" "$out/$name.log"
}
export -f run_one
xargs -d '\n' -P "$jobs" -I{} bash -c 'run_one "$@"' _ {} "$out" <"$out/order"

cp "$out/times" "$times"
passed=$(cat "$out"/*.log | { grep -o '^test result: .*' || true; } | awk '{ p += $4; f += $6; i += $8 } END { print p " passed, " f " failed, " i " ignored" }')
if [ -s "$out/failed" ]; then
  echo "make test: FAILED: $passed; failing binaries: $(paste -sd, "$out/failed")"
  exit 1
fi
echo "make test: $passed in $(wc -l <"$out/binaries") test binaries"
