#!/usr/bin/env bash
# make test-browser: the dashboard in headless Chromium while a cluster is under load. Checks
# that every server appears on the page, that its counter rises, and that the timeline draws
# bars in every server's lane; saves a screenshot.
# Skips (exit 0) with a message when Chromium is not installed.
set -euo pipefail
cd "$(dirname "$0")/.."

CHROME=$(command -v chromium || command -v chromium-browser || command -v google-chrome || true)
if [ -z "$CHROME" ]; then
  echo "test-browser: SKIPPED: Chromium is not installed (on Debian: apt-get install chromium)."
  exit 0
fi

cargo build --release --quiet
BIN=$PWD/target/release
SHOT=${SCREENSHOT:-target/dashboard.png}
work=$(mktemp -d)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

mkdir -p "$work/data/files"
cp data/colors.csv "$work/data/"
cp data/files/* "$work/data/files/"
echo '{"path": "colors.db", "writable": false}' > "$work/data/database.json"
echo '[]' > "$work/data/servers.json"
cd "$work"
alive() { for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null || { echo "test-browser: FAIL: a process died; logs:"; tail -n 5 "$work"/*.log; exit 1; }; done; }

# Servers slow enough for the timeline's bars to be seen (like the demo's, four times faster).
for s in "1 0.125" "2 0.25" "3 0.5"; do
  set -- $s
  "$BIN/server" "$1" 0 "$2" >/dev/null 2>"server-$1.log" &
  pids+=($!)
done
for _ in $(seq 1 600); do
  [ "$(grep -c '"id"' data/servers.json)" -ge 3 ] && break
  alive; sleep 0.1
done
"$BIN/loadbalancer" --port 0 --admin-port 0 >lb.out 2>lb.log &
pids+=($!)
for _ in $(seq 1 600); do
  [ "$(grep -c 'listening on' lb.out 2>/dev/null)" -ge 2 ] && break
  alive; sleep 0.1
done
lb=$(sed -n 1p lb.out | awk '{print $NF}')
admin=$(sed -n 2p lb.out | awk '{print $NF}')
for _ in $(seq 1 600); do
  [ "$(grep -c 'Connected to server' lb.log)" -ge 3 ] && break
  alive; sleep 0.1
done

# Load: five clients on persistent connections (one colour each on the timeline), more than
# the servers, so every server is kept busy and some requests wait in line.
"$BIN/client" bench --lb "$lb" --clients 5 --duration 60 >bench.out 2>&1 &
pids+=($!)
for _ in $(seq 1 600); do
  [ "$(grep -c 'reply sent' lb.log)" -ge 20 ] && break
  alive; sleep 0.1
done

chrome() {
  "$CHROME" --headless --no-sandbox --disable-gpu --disable-quic --no-first-run \
    --disable-background-networking --disable-component-update --disable-sync \
    --user-data-dir="$work/profile-$RANDOM" --window-size=1500,1100 "$@" 2>/dev/null
}
bars() { # how many timeline bars server $2 has on dumped page $1
  grep -o "class=\"bar\" data-server=\"$2\"" "$1" | wc -l
}
counts() { # server-id=requests pairs from a dumped page (grep and sed only: no python3 needed)
  grep -oE 'data-server-id="[0-9]+" data-requests="[0-9]+"' | sed -E 's/[^"]*"([0-9]+)"[^"]*"([0-9]+)"/\1 \2/'
}

chrome --virtual-time-budget=2500 --dump-dom "http://$admin/" > first.html
sleep 1.5   # let real requests happen between the two looks
chrome --virtual-time-budget=2500 --dump-dom "http://$admin/" > second.html
first=$(counts < first.html)
second=$(counts < second.html)
echo "first look:  $(echo $first)"
echo "second look: $(echo $second)"
echo "timeline bars: server 1: $(bars second.html 1), server 2: $(bars second.html 2), server 3: $(bars second.html 3)"

fail=0
for id in 1 2 3; do
  a=$(echo "$first" | awk -v id=$id '$1 == id {print $2}')
  b=$(echo "$second" | awk -v id=$id '$1 == id {print $2}')
  if [ -z "$b" ]; then
    echo "test-browser: FAIL: server $id is not on the page"; fail=1
  elif [ -n "$a" ] && [ "$b" -le "$a" ]; then
    if [ "$id" = 1 ]; then echo "test-browser: FAIL: server $id's counter did not rise ($a -> $b)"; fail=1; fi
  fi
done
# The fastest server takes most requests, so its counter must rise; slower ones may idle.
for id in 1 2 3; do
  [ "$(bars second.html $id)" -ge 1 ] || { echo "test-browser: FAIL: no bar in server $id's lane of the timeline"; fail=1; }
done
cd - >/dev/null
chrome --virtual-time-budget=2500 --screenshot="$PWD/$SHOT" "http://$admin/" >/dev/null
[ -s "$SHOT" ] || { echo "test-browser: FAIL: no screenshot"; fail=1; }
if [ "$fail" = 0 ]; then
  echo "test-browser: 1 passed, 0 failed (every server on the page, counters rising, bars on the timeline; screenshot in $SHOT)"
else
  echo "test-browser: 0 passed, 1 failed"
  exit 1
fi
