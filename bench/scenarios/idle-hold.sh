#!/usr/bin/env bash
# Idle hold: one release node (SQLite, the embedded default) holding ~19,500 idle
# WebSocket connections from 127.0.0.2-4; the node's RSS per connection from /proc,
# the connect + initial_state rate, and 0 failures.
#
#   bench/scenarios/idle-hold.sh                      # 19,500 connections, 2 bench processes
#   CONNECTIONS=1000 HOLD=5 bench/scenarios/idle-hold.sh
#
# Settings: CONNECTIONS (19500), HOLD seconds (20), SHARDS bench processes (2),
# SOURCES (127.0.0.2,127.0.0.3,127.0.0.4), PORT (18000), ADMIN_PORT (19000),
# CONNECT_CONCURRENCY per bench process (512); see lib.sh for the rest.
# Results in $OUT: idle.json (merged report), status-*.json, node-0.log.
source "$(dirname "$0")/lib.sh"

CONNECTIONS=${CONNECTIONS:-19500}
HOLD=${HOLD:-20}
SHARDS=${SHARDS:-2}
SOURCES=${SOURCES:-127.0.0.2,127.0.0.3,127.0.0.4}
PORT=${PORT:-18000}
ADMIN_PORT=${ADMIN_PORT:-19000}

scenario_init idle-hold
build_release
start_nodes 1 "$PORT" "$ADMIN_PORT" HERALD_MAX_CONNECTIONS=$((CONNECTIONS + 100))
admin 0 GET /admin/status >"$OUT/status-before.json"

BENCH_TIMEOUT=$((120 + HOLD + CONNECTIONS / 200)) bench_shards idle "$SHARDS" run \
    --node "$(node_urls 0)" --jwt-secret "$SECRET" --api-key "$API_KEY" \
    -c "$CONNECTIONS" --source "$SOURCES" --rate 0 --hold "$HOLD" \
    --connect-concurrency "${CONNECT_CONCURRENCY:-512}" --connect-timeout 60 \
    "${SERVER_PIDS[@]}"
admin 0 GET /admin/status >"$OUT/status-after.json"
log "results in $OUT"
