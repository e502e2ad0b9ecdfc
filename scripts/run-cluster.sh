#!/usr/bin/env bash
# The demo: three servers of different power and the balancer, on this machine.
# Ctrl-C stops them all; the servers file is left as it was.
# TLS=1 (make run-cluster-tls) adds a TLS listener on TLS_PORT, with a throwaway CA and
# certificate for 127.0.0.1 made at start in target/cluster-certs.
set -euo pipefail
cd "$(dirname "$0")/.."

LB_PORT=${LB_PORT:-5070}
TLS_PORT=${TLS_PORT:-5443}
ADMIN_PORT=${ADMIN_PORT:-5080}
SERVERS=("1 5071 0.5" "2 5072 1" "3 5073 2")
LOGS=target/cluster-logs

port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
for p in "$LB_PORT" 5071 5072 5073 "${ADMIN_PORT:-5080}"; do
  if port_in_use "$p"; then
    echo "run-cluster: port $p is already in use (another cluster running?). Stop it first." >&2
    exit 1
  fi
done

echo "Building (release; the first build takes a few minutes)..."
cargo build --release
BIN=target/release
mkdir -p "$LOGS" downloads
TLS_ARGS=()
if [ "${TLS:-0}" = 1 ]; then
  CERTS=target/cluster-certs
  cargo run --release --quiet --example make-certs -- "$CERTS"
  TLS_ARGS=(--tls-port "$TLS_PORT" --tls-cert "$CERTS/cert.pem" --tls-key "$CERTS/key.pem")
fi
saved=$(mktemp)
cp data/servers.json "$saved" 2>/dev/null || echo "[]" > "$saved"

pids=()
stop() {
  trap - INT TERM EXIT
  echo
  echo "Stopping the cluster..."
  for pid in "${pids[@]}"; do kill -INT "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  cp "$saved" data/servers.json && rm -f "$saved"
  echo "Stopped. data/servers.json is as it was."
}
# Ctrl-C is how the demo ends: a clean stop exits 0, so make does not report an error.
trap 'stop; exit 0' INT TERM
trap stop EXIT

for s in "${SERVERS[@]}"; do
  set -- $s
  "$BIN/server" "$1" "$2" "$3" >/dev/null 2>"$LOGS/server-$1.log" &
  pids+=($!)
done
# Wait until every server has recorded itself.
for _ in $(seq 1 300); do
  n=$(grep -c '"id"' data/servers.json 2>/dev/null || true)
  [ "${n:-0}" -ge "${#SERVERS[@]}" ] && break
  for pid in "${pids[@]}"; do
    kill -0 "$pid" 2>/dev/null || { echo "run-cluster: a server failed to start; see $LOGS/" >&2; cat "$LOGS"/server-*.log >&2; exit 1; }
  done
  sleep 0.1
done

"$BIN/loadbalancer" --port "$LB_PORT" --admin-port "$ADMIN_PORT" "${TLS_ARGS[@]}" >"$LOGS/loadbalancer.out" &
pids+=($!)
for _ in $(seq 1 300); do grep -q listening "$LOGS/loadbalancer.out" 2>/dev/null && break; sleep 0.1; done

cat <<MSG

minilb cluster running:
  servers      1 on 5071 (0.5 s), 2 on 5072 (1 s), 3 on 5073 (2 s)   logs: $LOGS/server-N.log
  loadbalancer 127.0.0.1:$LB_PORT (its log follows below)
  dashboard    http$([ "${TLS:-0}" = 1 ] && echo s)://127.0.0.1:$ADMIN_PORT/   (also /status and /metrics)

Try, from another terminal in this folder:
  target/release/client 1 'SELECT * FROM COLORS LIMIT 3;'
  target/release/client 1 --download-dir downloads file palette.png
  target/release/client 1                       (interactive; 'quit' to leave)
  printf 'SELECT Name FROM COLORS LIMIT 2\n' | nc -N 127.0.0.1 $LB_PORT     (nc: apt-get install netcat-openbsd)

MSG
if [ "${TLS:-0}" = 1 ]; then
  cat <<MSG
TLS on 127.0.0.1:$TLS_PORT (throwaway CA: $CERTS/ca.pem; the dashboard is then https://):
  target/release/client 1 --lb 127.0.0.1:$TLS_PORT --tls --ca $CERTS/ca.pem 'SELECT * FROM COLORS LIMIT 3;'
  openssl s_client -connect 127.0.0.1:$TLS_PORT -CAfile $CERTS/ca.pem -quiet     (then type a query)
  curl --cacert $CERTS/ca.pem https://127.0.0.1:$ADMIN_PORT/status

MSG
fi
echo "Ctrl-C stops everything."
echo
wait
