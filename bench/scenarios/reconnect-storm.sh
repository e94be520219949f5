#!/usr/bin/env bash
# Reconnect storm after a drain: two nodes (PostgreSQL + Redis). CONNECTIONS clients
# hold connections to node 0 while notifications flow to them (published through
# node 1); node 0 is drained over WINDOW seconds and every client reconnects to
# node 1 with `after=<last id>`. Figures: reconnect time (close to initial_state on
# node 1), node 1's accept rate, and delivered vs expected across the move (0 lost,
# 0 duplicated: what was published during the gap arrives in `missed`).
#
#   bench/scenarios/reconnect-storm.sh
#   WINDOW=0 bench/scenarios/reconnect-storm.sh      # everyone at once (no pacing)
#
# Settings: CONNECTIONS (19000), WINDOW s (10), RATE notifications/s (500),
# DURATION s of publishing (25), SHARDS (2), SOURCES, BASE_PORT (18030), BASE_ADMIN (19030).
source "$(dirname "$0")/lib.sh"

CONNECTIONS=${CONNECTIONS:-19000}
WINDOW=${WINDOW:-10}
RATE=${RATE:-500}
DURATION=${DURATION:-25}
SHARDS=${SHARDS:-2}
SOURCES=${SOURCES:-127.0.0.2,127.0.0.3,127.0.0.4}
BASE_PORT=${BASE_PORT:-18030}
BASE_ADMIN=${BASE_ADMIN:-19030}

scenario_init reconnect-storm
build_release
use_postgres
use_redis
start_nodes 2 "$BASE_PORT" "$BASE_ADMIN" HERALD_MAX_CONNECTIONS=$((CONNECTIONS + 100))

# Drain node 0 once it holds every connection, while the publisher runs.
(
    for _ in $(seq 1 1200); do
        n=$(admin 0 GET /admin/status | sed -n 's/.*"connections":\([0-9]*\).*/\1/p')
        [[ -n $n ]] && (( n >= CONNECTIONS )) && break
        sleep 0.1
    done
    sleep 3
    date -u +%FT%T.%3NZ >"$OUT/drain-started.txt"
    admin 0 POST /admin/drain "{\"window_s\":$WINDOW}" >"$OUT/drain.json"
    for _ in $(seq 1 1200); do
        admin 0 GET /admin/status | grep -q '"state":"drained"' && break
        sleep 0.1
    done
    date -u +%FT%T.%3NZ >"$OUT/drain-finished.txt"
) &
EXTRA_PIDS+=($!)

BENCH_TIMEOUT=$((240 + DURATION)) bench_shards storm "$SHARDS" run \
    --node "$(node_urls 0)" --standby "$(node_urls 1)" --api-url "$(node_urls 1)" --reconnect \
    --jwt-secret "$SECRET" --api-key "$API_KEY" \
    -c "$CONNECTIONS" --source "$SOURCES" --mode notify --batch 50 \
    --rate "$RATE" --duration "$DURATION" --settle 30 --connect-timeout 60 \
    --server-pid "${NODE_PID[1]}"
admin 0 GET /admin/status >"$OUT/status-0.json"
admin 1 GET /admin/status >"$OUT/status-1.json"
log "drain started $(cat "$OUT/drain-started.txt" 2>/dev/null), node 0 drained $(cat "$OUT/drain-finished.txt" 2>/dev/null)"
log "node 1 now: $(cat "$OUT/status-1.json")"
log "results in $OUT"
