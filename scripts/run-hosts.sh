#!/usr/bin/env bash
# The demo across hosts: five network namespaces on one bridge (addresses from 198.18.0.0/15,
# the range set aside for network tests): the balancer, two servers that join it with a token,
# the database and a client. Prints the commands to try; Ctrl-C (or an error) tears it all down.
# Needs root and iproute2.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" != 0 ] || ! command -v ip >/dev/null; then
  echo "run-hosts: needs root and iproute2 (ip): try 'sudo make run-hosts'" >&2
  exit 1
fi

PREFIX="minilb-demo-$$-"
NET="198.19.$(($$ % 256))"
HOSTS=(lb server1 server2 db client)
BIN=target/release
DIR=$(mktemp -d /tmp/minilb-hosts.XXXXXX)
PG_BIN=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
PG_DIR=
pids=()
tail_pid=

stop() {
  trap - INT TERM EXIT
  echo
  echo "Stopping: processes, namespaces, $DIR..."
  for pid in "${pids[@]}"; do kill -INT "$pid" 2>/dev/null || true; done
  # A background job ignores SIGINT (no job control in a script): tail needs TERM.
  [ -z "$tail_pid" ] || kill "$tail_pid" 2>/dev/null || true
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  if [ -n "$PG_DIR" ]; then
    ip netns exec "${PREFIX}db" runuser -u postgres -- "$PG_BIN/pg_ctl" -D "$PG_DIR/data" -m fast -w stop >/dev/null 2>&1 || true
    rm -rf "$PG_DIR"
  fi
  for ns in "${HOSTS[@]}" bridge; do ip netns del "$PREFIX$ns" 2>/dev/null || true; done
  rm -rf "$DIR"
  echo "Stopped; nothing is left."
}
# Ctrl-C is how the demo ends: a clean stop exits 0, so make does not report an error.
trap 'stop; exit 0' INT TERM
trap stop EXIT

echo "Building (release; the first build takes a few minutes)..."
cargo build --release

# The bridge has a namespace of its own: this machine gets no new interface.
BR="${PREFIX}bridge"
ip netns add "$BR"
ip -n "$BR" link add br0 type bridge
ip -n "$BR" link set br0 up
i=0
for h in "${HOSTS[@]}"; do
  i=$((i + 1))
  ns="$PREFIX$h"
  ip netns add "$ns"
  ip -n "$ns" link set lo up
  ip -n "$BR" link add "h$i" type veth peer name eth0 netns "$ns"
  ip -n "$BR" link set "h$i" master br0 up
  ip -n "$ns" addr add "$NET.$i/24" dev eth0
  ip -n "$ns" link set eth0 up
done
LB="$NET.1"

cp data/colors.csv "$DIR/"
cp -r data/files "$DIR/files"
if [ -n "$PG_BIN" ] && id -u postgres >/dev/null 2>&1; then
  # A throwaway PostgreSQL on the database's host; the first server creates and fills the table.
  PG_DIR=$(mktemp -d /tmp/minilb-hosts-pg.XXXXXX)
  chown postgres: "$PG_DIR"
  runuser -u postgres -- "$PG_BIN/initdb" -D "$PG_DIR/data" -A trust -U postgres --no-sync >/dev/null
  echo "host all all $NET.0/24 trust" >>"$PG_DIR/data/pg_hba.conf"
  ip netns exec "${PREFIX}db" runuser -u postgres -- "$PG_BIN/pg_ctl" -D "$PG_DIR/data" -l "$PG_DIR/log" \
    -o "-p 5432 -k $PG_DIR -c listen_addresses=$NET.4" -w start >/dev/null
  ip netns exec "${PREFIX}db" runuser -u postgres -- "$PG_BIN/psql" -X -q -h "$NET.4" -U postgres \
    -c "CREATE ROLE minilb LOGIN" -c "CREATE DATABASE colors OWNER minilb"
  echo "{\"url\": \"postgres://minilb@$NET.4:5432/colors\", \"writable\": true}" >"$DIR/database.json"
  DB="PostgreSQL at $NET.4:5432 (database colors, role minilb), writable"
else
  # Without PostgreSQL both servers open the same SQLite file (the namespaces share folders).
  echo '{"path": "colors.db", "writable": true, "seed": "colors.csv"}' >"$DIR/database.json"
  DB="$DIR/colors.db (no PostgreSQL here: apt-get install postgresql), writable"
fi
echo '[]' >"$DIR/servers.json"
head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$DIR/token"
echo not-the-token >"$DIR/wrong-token"
ROOT=$PWD

(cd "$DIR" && exec ip netns exec "${PREFIX}lb" "$ROOT/$BIN/loadbalancer" --host "$LB" --port 5070 \
  --admin-host "$LB" --admin-port 5080 --token-file token --servers-file servers.json \
  2>"$DIR/loadbalancer.log") >/dev/null &
pids+=($!)
for id in 1 2; do
  (cd "$DIR" && exec ip netns exec "${PREFIX}server$id" "$ROOT/$BIN/server" "$id" 5071 "$id" \
    --host "$NET.$((id + 1))" --join "$LB:5080" --token-file token --db database.json --files files \
    2>"$DIR/server-$id.log") >/dev/null &
  pids+=($!)
done
for _ in $(seq 1 300); do
  n=$(grep -c 'Connected to server' "$DIR/loadbalancer.log" 2>/dev/null || true)
  [ "${n:-0}" -ge 2 ] && break
  for pid in "${pids[@]}"; do
    kill -0 "$pid" 2>/dev/null || { echo "run-hosts: a program failed to start:" >&2; cat "$DIR"/*.log >&2; exit 1; }
  done
  sleep 0.1
done

C="ip netns exec ${PREFIX}client"
cat <<MSG

minilb across hosts (network namespaces; logs in $DIR):
  loadbalancer  $LB:5070, admin $LB:5080 (joins need the token in $DIR/token)
  server 1      $NET.2:5071 (1 s a request)     server 2   $NET.3:5071 (2 s)
  database      $DB, shared by both servers
  client host   $NET.5

Try, from another terminal in this folder (as root):
  $C $BIN/client 1 --lb $LB:5070 'SELECT * FROM COLORS LIMIT 3;'
  $C $BIN/client 1 --lb $LB:5070 "INSERT INTO COLORS VALUES ('Demo', '#123456', 'rgb(18,52,86)')"
  for i in 1 2; do $C $BIN/client 1 --lb $LB:5070 "SELECT * FROM COLORS WHERE \"Name\" = 'Demo'" & done; wait    (two at once: server 2 reads it too)
  $C $BIN/client 1 --lb $LB:5070      (interactive; 'quit' to leave)
  $C $BIN/server 3 5071 0 --host $NET.5 --join $LB:5080 --token-file $DIR/wrong-token    (refused: wrong token)
Cut server 2's link, watch the log below take it out in ~3 s, then restore it:
  ip -n $BR link set h3 down
  ip -n $BR link set h3 up

Ctrl-C stops everything and deletes the namespaces. The balancer's log follows.

MSG
tail -f "$DIR/loadbalancer.log" &
tail_pid=$!
wait
