#!/usr/bin/env bash
# Idle hold: one release node, ~19,500 idle WebSocket connections from 127.0.0.2-4,
# server RSS per connection from /proc. Starts everything it needs, is bounded in time
# (every step under `timeout`), and stops what it started (by pid) on any exit.
#
#   bench/scenarios/idle-hold.sh                      # 19,500 connections, 30 s hold
#   CONNECTIONS=1000 HOLD=5 bench/scenarios/idle-hold.sh
#
# Settings (environment): CONNECTIONS (19500), HOLD seconds (30), SOURCES
# (127.0.0.2,127.0.0.3,127.0.0.4), SHARDS bench processes (1; each is capped at
# 20,000 open files), PORT (18000), ADMIN_PORT (19191), OUT (bench/results/idle-hold-<time>),
# SKIP_BUILD=1 to reuse target/release binaries.
# Results: $OUT/report.json (merged when SHARDS>1), $OUT/status-*.json, $OUT/server.log,
# and the summary line on stdout.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
CONNECTIONS=${CONNECTIONS:-19500}
HOLD=${HOLD:-30}
SOURCES=${SOURCES:-127.0.0.2,127.0.0.3,127.0.0.4}
SHARDS=${SHARDS:-1}
PORT=${PORT:-18000}
ADMIN_PORT=${ADMIN_PORT:-19191}
OUT=${OUT:-$ROOT/bench/results/idle-hold-$(date -u +%Y%m%dT%H%M%SZ)}
SERVER=$ROOT/target/release/herald-server
BENCH=$ROOT/target/release/herald-bench

mkdir -p "$OUT"
DATA=$(mktemp -d /tmp/herald-idle-hold.XXXXXX)
SECRET=$(od -An -tx1 -N16 /dev/urandom | tr -d ' \n')
API_KEY=$(od -An -tx1 -N16 /dev/urandom | tr -d ' \n')
ADMIN_TOKEN=$(od -An -tx1 -N16 /dev/urandom | tr -d ' \n')
SERVER_PID=
BENCH_PIDS=()

cleanup() {
    local rc=$?
    for p in "${BENCH_PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
    if [[ -n $SERVER_PID ]] && kill -0 "$SERVER_PID" 2>/dev/null; then
        kill -TERM "$SERVER_PID" 2>/dev/null || true
        for _ in $(seq 1 150); do kill -0 "$SERVER_PID" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$SERVER_PID" 2>/dev/null || true
    fi
    rm -rf "$DATA"
    exit $rc
}
trap cleanup EXIT INT TERM

if [[ ${SKIP_BUILD:-0} != 1 ]]; then
    (cd "$ROOT" && timeout 1200 cargo build --release -p herald-server -p herald-bench)
fi

# Port free?
if (exec 3<>/dev/tcp/127.0.0.1/"$PORT") 2>/dev/null; then
    echo "idle-hold: port $PORT is in use; set PORT" >&2
    exit 1
fi

echo "idle-hold: machine: $(nproc) cores, $(awk '/MemTotal/{print $2" kB"}' /proc/meminfo), kernel $(uname -r)" | tee "$OUT/machine.txt"
echo "idle-hold: nofile soft/hard $(ulimit -Sn)/$(ulimit -Hn), port range $(cat /proc/sys/net/ipv4/ip_local_port_range | tr '\t' '-'), somaxconn $(cat /proc/sys/net/core/somaxconn)" | tee -a "$OUT/machine.txt"

# The node: soft open-file limit raised to the hard one (20,000 here); capacity is
# min(soft - reserve, HERALD_MAX_CONNECTIONS).
per_shard=$(( (CONNECTIONS + SHARDS - 1) / SHARDS ))
if (( per_shard + 64 > $(ulimit -Hn) )); then
    echo "idle-hold: $per_shard connections per bench process exceed the open-file limit; raise SHARDS" >&2
    exit 1
fi
(
    ulimit -Sn "$(ulimit -Hn)"
    export HERALD_LISTEN=127.0.0.1:$PORT HERALD_ADMIN_LISTEN=127.0.0.1:$ADMIN_PORT
    export HERALD_DATA_DIR=$DATA DATABASE_URL=sqlite://$DATA/herald.db
    export HERALD_JWT_SECRET=$SECRET HERALD_API_KEY=$API_KEY HERALD_ADMIN_TOKEN=$ADMIN_TOKEN
    export HERALD_FD_RESERVE=${HERALD_FD_RESERVE:-200}
    export HERALD_MAX_CONNECTIONS=${HERALD_MAX_CONNECTIONS:-$((CONNECTIONS + 100))}
    export HERALD_SHUTDOWN_DRAIN_S=1 RUST_LOG=${RUST_LOG:-warn}
    exec "$SERVER"
) >"$OUT/server.out" 2>"$OUT/server.log" &
SERVER_PID=$!

for _ in $(seq 1 300); do
    curl -sf "http://127.0.0.1:$PORT/healthz" >/dev/null 2>&1 && break
    kill -0 "$SERVER_PID" 2>/dev/null || { echo "idle-hold: server exited; see $OUT/server.log" >&2; exit 1; }
    sleep 0.1
done
curl -sf "http://127.0.0.1:$PORT/healthz" >/dev/null || { echo "idle-hold: server not healthy in 30 s" >&2; exit 1; }
status() { curl -s -H "Authorization: Bearer $ADMIN_TOKEN" "http://127.0.0.1:$ADMIN_PORT/admin/status" >"$OUT/status-$1.json" || true; }
status before

# The generator: idle (no publishing), held HOLD seconds, server sampled before and
# after connecting. With several shards only shard 0 samples the server, and the hold
# must outlast the slowest shard's connecting.
bench_timeout=$(( 120 + ${HOLD%.*} + CONNECTIONS / 500 ))
for ((i = 0; i < SHARDS; i++)); do
    ( ulimit -Sn "$(ulimit -Hn)"
      pid_arg=()
      (( i == 0 )) && pid_arg=(--server-pid "$SERVER_PID")
      exec timeout "$bench_timeout" "$BENCH" run --node "http://127.0.0.1:$PORT" \
        --jwt-secret "$SECRET" --api-key "$API_KEY" \
        -c "$CONNECTIONS" --shard "$i/$SHARDS" --source "$SOURCES" \
        --rate 0 --hold "$HOLD" --connect-timeout 60 "${pid_arg[@]}" \
        --json "$OUT/shard-$i.json"
    ) >"$OUT/shard-$i.out" 2>"$OUT/shard-$i.err" &
    BENCH_PIDS+=($!)
done
# Status once the node holds every connection (polled, gives up after the bench's bound).
( for _ in $(seq 1 $(( bench_timeout * 2 ))); do
      n=$(curl -s -H "Authorization: Bearer $ADMIN_TOKEN" "http://127.0.0.1:$ADMIN_PORT/admin/status" \
          | sed -n 's/.*"connections":\([0-9]*\).*/\1/p')
      if [[ -n $n ]] && (( n >= CONNECTIONS )); then status held; break; fi
      sleep 0.5
  done ) &
status_pid=$!
fail=0
for p in "${BENCH_PIDS[@]}"; do wait "$p" || fail=1; done
BENCH_PIDS=()
kill "$status_pid" 2>/dev/null || true
wait "$status_pid" 2>/dev/null || true
(( fail == 0 )) || { echo "idle-hold: a bench process failed; see $OUT/shard-*.err" >&2; exit 1; }
status after

if (( SHARDS > 1 )); then
    "$BENCH" merge "$OUT"/shard-*.json --json "$OUT/report.json" | tee "$OUT/summary.txt"
else
    cp "$OUT/shard-0.json" "$OUT/report.json"
    tee "$OUT/summary.txt" <"$OUT/shard-0.out"
fi
echo "idle-hold: results in $OUT"
