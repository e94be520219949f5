#!/usr/bin/env bash
# Targeted fan-out ramp: CONNECTIONS connections (one user each), notifications
# published in batches to individual users at a rising rate (×FACTOR per STEP
# seconds) until p99 publish-to-receive latency reaches 50 ms or anything is lost;
# the best passing rate is the figure.
#
#   bench/scenarios/fanout-ramp.sh                     # one node, SQLite (the default)
#   STORE=postgres bench/scenarios/fanout-ramp.sh      # one node, PostgreSQL
#   MODE=event START=30000 FACTOR=1.08 bench/scenarios/fanout-ramp.sh   # user events (not stored)
#   MODE=event BATCH=1 CONCURRENCY=128 START=2000 bench/scenarios/fanout-ramp.sh   # one event per POST
#
# Near the limit, take small steps: a jump of ×1.25 from a passing rate can fail a
# rate that a gradual ramp passes (38,147 → 47,684/s failed at p99 105 ms, while
# ×1.08 steps passed 55,528/s in the same hour; bench/RESULTS.md).
#
# Settings: CONNECTIONS (10000), MODE (notify), STORE (sqlite|postgres), START
# msgs/s (5000), FACTOR (1.25), MAX rate (400000), STEP s (5), WARMUP s at START before
# the first step, not counted (5: a fresh database's files grow), BATCH (100), SHARDS (2,
# each publishing half the rate to its own users), CONCURRENCY (publish requests in flight
# per bench process: 16), SOURCES, PORT (18020), ADMIN_PORT (19020).
source "$(dirname "$0")/lib.sh"

CONNECTIONS=${CONNECTIONS:-10000}
MODE=${MODE:-notify}
STORE=${STORE:-sqlite}
START=${START:-5000}
FACTOR=${FACTOR:-1.25}
MAX=${MAX:-400000}
STEP=${STEP:-5}
WARMUP=${WARMUP:-5}
BATCH=${BATCH:-100}
SHARDS=${SHARDS:-2}
CONCURRENCY=${CONCURRENCY:-16}
SOURCES=${SOURCES:-127.0.0.2,127.0.0.3}
PORT=${PORT:-18020}
ADMIN_PORT=${ADMIN_PORT:-19020}

scenario_init fanout-ramp
build_release
[[ $STORE == postgres ]] && use_postgres
start_nodes 1 "$PORT" "$ADMIN_PORT" HERALD_MAX_CONNECTIONS=$((CONNECTIONS + 100))

BENCH_TIMEOUT=${BENCH_TIMEOUT:-900} bench_shards ramp "$SHARDS" ramp \
    --node "$(node_urls 0)" --jwt-secret "$SECRET" --api-key "$API_KEY" \
    -c "$CONNECTIONS" --source "$SOURCES" --mode "$MODE" --batch "$BATCH" \
    --start-rate "$START" --factor "$FACTOR" --max-rate "$MAX" --duration "$STEP" --warmup "$WARMUP" \
    --settle 3 --hold 2 --publish-concurrency "$CONCURRENCY" "${SERVER_PIDS[@]}"
print_ramp_steps "$OUT/ramp.json" | tee "$OUT/steps.txt"
log "results in $OUT"
