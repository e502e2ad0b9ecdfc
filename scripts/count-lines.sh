#!/usr/bin/env bash
# Non-test lines of src/ and bin/: each .rs file up to its first #[cfg(test)].
cd "${1:-.}"
total=0
for f in $(find src bin -name '*.rs' | sort); do
  n=$(awk '/^#\[cfg\(test\)\]/{exit} {n++} END{print n+0}' "$f")
  total=$((total+n)); printf '%6d %s\n' "$n" "$f"
done
echo "total $total"
core=0; for f in src/idle_queue.rs $(ls src/policy.rs src/policy/*.rs 2>/dev/null) src/balancer/session.rs; do n=$(awk '/^#\[cfg\(test\)\]/{exit} {n++} END{print n+0}' "$f"); core=$((core+n)); done; echo "core $core"
