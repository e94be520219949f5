#!/usr/bin/env bash
# One broadcast to every connection: CONNECTIONS connections all subscribed to one
# group, one event per second published to it for DURATION seconds; publish-to-
# receive latency over every (event, connection) pair, delivered vs expected.
#
#   bench/scenarios/broadcast.sh                 # one node (SQLite), 19,500 connections
#   NODES=2 CONNECTIONS=20000 bench/scenarios/broadcast.sh   # two nodes, Redis + PostgreSQL
#
# One node holds at most ~19,800 connections here (20,000 open files per process),
# so 20,000 take two nodes. Settings: NODES (1), CONNECTIONS (19500), RATE events/s
# (1), DURATION s (10), SHARDS bench processes (2), HOLD s (8; must cover the slowest
# shard's connecting), SOURCES, BASE_PORT (18010), BASE_ADMIN (19010).
source "$(dirname "$0")/lib.sh"

NODES=${NODES:-1}
CONNECTIONS=${CONNECTIONS:-19500}
RATE=${RATE:-1}
DURATION=${DURATION:-10}
SHARDS=${SHARDS:-2}
HOLD=${HOLD:-8}
SOURCES=${SOURCES:-127.0.0.2,127.0.0.3,127.0.0.4}
BASE_PORT=${BASE_PORT:-18010}
BASE_ADMIN=${BASE_ADMIN:-19010}

scenario_init broadcast
build_release
if (( NODES > 1 )); then use_postgres; use_redis; fi
per_node=$(( (CONNECTIONS + NODES - 1) / NODES ))
start_nodes "$NODES" "$BASE_PORT" "$BASE_ADMIN" HERALD_MAX_CONNECTIONS=$((per_node + 100))

# The group has no {shard}: every shard subscribes to it, shard 0 publishes.
BENCH_TIMEOUT=$((180 + HOLD + DURATION)) bench_shards broadcast "$SHARDS" run \
    --node "$(node_urls $(seq 0 $((NODES - 1))))" --jwt-secret "$SECRET" --api-key "$API_KEY" \
    -c "$CONNECTIONS" --source "$SOURCES" --mode broadcast --group bench_all \
    --rate "$RATE" --duration "$DURATION" --hold "$HOLD" --settle 5 \
    --connect-timeout 60 "${SERVER_PIDS[@]}"
log "results in $OUT"
