#!/usr/bin/env bash
# One notification per POST, the way most backends publish (a comment, a like, an
# order update, each from its own worker): CONNECTIONS connections (one user each),
# then
#
#   1. steady: RATE single POSTs/s for DURATION s: server CPU per notification
#      (one delivery each, so "cpu/1000 deliveries" in ms is µs per notification),
#      latency, delivered vs expected;
#   2. ramp: single POSTs at a rising rate (×FACTOR per STEP s) until p99
#      publish-to-receive reaches 50 ms or anything is lost; the best passing rate is
#      the figure.
#
#   bench/scenarios/single-post.sh                        # one node, SQLite (the default)
#   STORE=postgres bench/scenarios/single-post.sh         # one node, PostgreSQL + Redis
#   NODES=3 bench/scenarios/single-post.sh                # three nodes, one PostgreSQL + Redis
#   CONNECTIONS=19000 RATE=5000 RAMP=0 bench/scenarios/single-post.sh   # a full node, steady only
#   MODE=event RAMP=0 bench/scenarios/single-post.sh     # one user event per POST: no store
#
# With NODES > 1, connections and POSTs are spread over the nodes, so every POST's
# notification mostly reaches its user through Redis from another node.
#
# Settings: MODE (notify; event posts to each user's personal group instead),
# CONNECTIONS (5000), STORE (sqlite|postgres; postgres runs with Redis, as a cluster
# would), NODES (1; more means postgres), RATE (4000), DURATION (10), RAMP (1; 0 skips
# the ramp), START (2000), FACTOR (1.25), MAX (200000), STEP (5), WARMUP (5), SHARDS (2
# bench processes, each publishing half the rate to its own users), CONCURRENCY (POSTs
# in flight per bench process: 128), SOURCES, BASE_PORT (18030), BASE_ADMIN (19030).
source "$(dirname "$0")/lib.sh"

MODE=${MODE:-notify}
CONNECTIONS=${CONNECTIONS:-5000}
STORE=${STORE:-sqlite}
NODES=${NODES:-1}
RATE=${RATE:-4000}
DURATION=${DURATION:-10}
START=${START:-2000}
FACTOR=${FACTOR:-1.25}
MAX=${MAX:-200000}
STEP=${STEP:-5}
WARMUP=${WARMUP:-5}
SHARDS=${SHARDS:-2}
RAMP=${RAMP:-1}
CONCURRENCY=${CONCURRENCY:-128}
SOURCES=${SOURCES:-127.0.0.2,127.0.0.3}
BASE_PORT=${BASE_PORT:-18030}
BASE_ADMIN=${BASE_ADMIN:-19030}

(( NODES > 1 )) && STORE=postgres
scenario_init single-post
build_release
if [[ $STORE == postgres ]]; then
    use_postgres
    use_redis
fi
per_node=$(( (CONNECTIONS + NODES - 1) / NODES ))
start_nodes "$NODES" "$BASE_PORT" "$BASE_ADMIN" HERALD_MAX_CONNECTIONS=$((per_node + 100))
urls=$(node_urls $(seq 0 $((NODES - 1))))
common=(--node "$urls" --api-url "$urls" --jwt-secret "$SECRET" --api-key "$API_KEY"
    -c "$CONNECTIONS" --source "$SOURCES" --mode "$MODE" --batch 1
    --publish-concurrency "$CONCURRENCY" --connect-timeout 60 "${SERVER_PIDS[@]}")

bench_shards steady "$SHARDS" run "${common[@]}" \
    --rate "$RATE" --duration "$DURATION" --hold 3 --settle 5
if [[ $RAMP == 1 ]]; then
    BENCH_TIMEOUT=${BENCH_TIMEOUT:-900} bench_shards ramp "$SHARDS" ramp "${common[@]}" \
        --start-rate "$START" --factor "$FACTOR" --max-rate "$MAX" --duration "$STEP" --warmup "$WARMUP" \
        --settle 3 --hold 2
fi
for ((n = 0; n < NODES; n++)); do
    # How many POSTs shared a transaction: herald_publish_group_requests.
    admin "$n" GET /metrics | grep '^herald_publish_group_requests' >"$OUT/groups-$n.txt" || true
done
[[ $RAMP == 1 ]] && print_ramp_steps "$OUT/ramp.json" | tee "$OUT/steps.txt"
log "results in $OUT"
