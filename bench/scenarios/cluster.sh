#!/usr/bin/env bash
# A cluster on one box: NODES nodes sharing Redis and PostgreSQL, holding as many
# connections as the box allows (each process here may open 20,000 files, so a node
# holds ~19,000 and the box's total grows with NODES), then targeted notifications
# published through node 0 reach users on every node (cross-node fan-out by Redis).
#
#   bench/scenarios/cluster.sh                         # 4 nodes, 76,000 connections
#   NODES=6 CONNECTIONS=114000 bench/scenarios/cluster.sh
#
# Settings: NODES (4), CONNECTIONS (NODES × 19000), SHARDS bench processes
# (CONNECTIONS / 19000, rounded up), RATE notifications/s (5000), DURATION s (10),
# HOLD s (15), CONNECT_CONCURRENCY dials in flight per bench process (128; at 256 the
# nodes' PostgreSQL pools could not answer every opening within their 3 s acquire
# timeout), SOURCES (127.0.0.2-9), BASE_PORT (18040), BASE_ADMIN (19040).
source "$(dirname "$0")/lib.sh"

NODES=${NODES:-4}
CONNECTIONS=${CONNECTIONS:-$((NODES * 19000))}
SHARDS=${SHARDS:-$(( (CONNECTIONS + 18999) / 19000 ))}
RATE=${RATE:-5000}
DURATION=${DURATION:-10}
HOLD=${HOLD:-15}
SOURCES=${SOURCES:-127.0.0.2,127.0.0.3,127.0.0.4,127.0.0.5,127.0.0.6,127.0.0.7,127.0.0.8,127.0.0.9}
BASE_PORT=${BASE_PORT:-18040}
BASE_ADMIN=${BASE_ADMIN:-19040}

scenario_init cluster
build_release
use_postgres
use_redis
per_node=$(( (CONNECTIONS + NODES - 1) / NODES ))
start_nodes "$NODES" "$BASE_PORT" "$BASE_ADMIN" HERALD_MAX_CONNECTIONS=$((per_node + 200)) HERALD_DB_POOL=${HERALD_DB_POOL:-8}

BENCH_TIMEOUT=$((300 + HOLD + DURATION + CONNECTIONS / 500)) bench_shards cluster "$SHARDS" run \
    --node "$(node_urls $(seq 0 $((NODES - 1))))" --api-url "$(node_urls 0)" \
    --jwt-secret "$SECRET" --api-key "$API_KEY" \
    -c "$CONNECTIONS" --source "$SOURCES" --mode notify --batch 100 \
    --rate "$RATE" --duration "$DURATION" --hold "$HOLD" --settle 10 \
    --connect-timeout 120 --connect-concurrency "${CONNECT_CONCURRENCY:-128}" "${SERVER_PIDS[@]}"
for ((n = 0; n < NODES; n++)); do
    admin "$n" GET /admin/status >"$OUT/status-$n.json"
done
log "results in $OUT"
