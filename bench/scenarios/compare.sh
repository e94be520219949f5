#!/usr/bin/env bash
# Herald against the baseline (the seed's stack: Django Channels + channels_redis +
# PostgreSQL under uvicorn, one worker per core; bench/baseline/), in one run, on
# the same machine, driven by the same load generator with the same arguments:
#
#   1. hold: CONNECTIONS connections (one user each), held idle: connect rate, time to
#      initial_state, server RSS per connection (all of the stack's server processes);
#   2. steady: notifications to individual users at RATE/s for DURATION s on those
#      connections: latency, delivered vs expected, server CPU per delivery (at a
#      rate the baseline nearly sustains, so Herald's idle time is in its figure);
#   3. ramp: the highest rate with p99 < 50 ms (from START_*, ×1.5 per 5 s step),
#      and the server CPU per delivery over the whole ramp (each stack loaded up to
#      and past its limit): the efficiency figure;
#   4. single: the same ramp with one notification per POST (from START_SINGLE_*),
#      the way most backends publish.
#
# Both run on PostgreSQL and Redis (Herald as a one-node cluster, so a notification
# takes the same path through Redis as in the baseline). Writes $OUT/compare.md.
#
#   bench/scenarios/compare.sh
#   CONNECTIONS=1000 RATE=100 bench/scenarios/compare.sh
#
# Settings: CONNECTIONS (5000), RATE (200; the baseline's 2 workers saturate near
# 500/s), DURATION (20), BATCH per publish request (10), START_HERALD (2000),
# START_BASELINE (20), START_SINGLE_HERALD (2000), START_SINGLE_BASELINE (20), SOURCES,
# PORT (18060), ADMIN_PORT (19060), BASELINE_PORT (18160).
source "$(dirname "$0")/lib.sh"

CONNECTIONS=${CONNECTIONS:-5000}
RATE=${RATE:-200}
DURATION=${DURATION:-20}
BATCH=${BATCH:-10}
START_HERALD=${START_HERALD:-2000}
START_BASELINE=${START_BASELINE:-20}
START_SINGLE_HERALD=${START_SINGLE_HERALD:-2000}
START_SINGLE_BASELINE=${START_SINGLE_BASELINE:-20}
SOURCES=${SOURCES:-127.0.0.2,127.0.0.3}
PORT=${PORT:-18060}
ADMIN_PORT=${ADMIN_PORT:-19060}
BASELINE_PORT=${BASELINE_PORT:-18160}

scenario_init compare
build_release
"$ROOT/bench/baseline/install.sh" >&2

# The four phases against one server; $1 names the reports, then the URL, the
# ramp's and the single-POST ramp's first rates; the rest are pid args.
drive() {
    local name=$1 url=$2 start=$3 start_single=$4
    shift 4
    local common=(--node "$url" --jwt-secret "$SECRET" --api-key "$API_KEY"
        -c "$CONNECTIONS" --source "$SOURCES" --mode notify
        --connect-timeout 60 "$@")
    bench_shards "$name-hold" 1 run "${common[@]}" --batch "$BATCH" --rate 0 --hold 10
    bench_shards "$name-steady" 1 run "${common[@]}" --batch "$BATCH" --rate "$RATE" --duration "$DURATION" --hold 3 --settle 10
    BENCH_TIMEOUT=900 bench_shards "$name-ramp" 1 ramp "${common[@]}" --batch "$BATCH" --start-rate "$start" \
        --factor 1.5 --duration 5 --settle 5 --hold 3 --warmup 3
    BENCH_TIMEOUT=900 bench_shards "$name-single" 1 ramp "${common[@]}" --batch 1 --publish-concurrency 128 \
        --start-rate "$start_single" --factor 1.5 --duration 5 --settle 5 --hold 3 --warmup 3
}

# --- Herald: one node, PostgreSQL + Redis.
use_postgres
use_redis
start_nodes 1 "$PORT" "$ADMIN_PORT"
drive herald "$(node_urls 0)" "$START_HERALD" "$START_SINGLE_HERALD" "${SERVER_PIDS[@]}"
stop_pid "${NODE_PID[0]}"
NODE_PID=() SERVER_PIDS=()

# --- The baseline: its own database and Redis prefix, dropped when it stops.
BASELINE_DB=herald_bench_baseline_$$
(
    export BASELINE_PG_DB=$BASELINE_DB HERALD_JWT_SECRET=$SECRET HERALD_API_KEY=$API_KEY
    export PORT=$BASELINE_PORT PIDFILE=$OUT/baseline.pids DROP_DB_ON_EXIT=1
    export BASELINE_REDIS_PREFIX=herald-bench-baseline-$$
    exec "$ROOT/bench/baseline/serve.sh"
) >"$OUT/baseline.out" 2>"$OUT/baseline.log" &
baseline=$!
EXTRA_PIDS+=("$baseline")
for _ in $(seq 1 600); do
    [[ -s $OUT/baseline.pids ]] && break
    kill -0 "$baseline" 2>/dev/null || { log "the baseline exited; see $OUT/baseline.log"; exit 1; }
    sleep 0.1
done
[[ -s $OUT/baseline.pids ]] || { log "the baseline did not start in 60 s"; exit 1; }
pid_args=()
while read -r p; do pid_args+=(--server-pid "$p"); done <"$OUT/baseline.pids"
drive baseline "http://127.0.0.1:$BASELINE_PORT" "$START_BASELINE" "$START_SINGLE_BASELINE" "${pid_args[@]}"
stop_pid "$baseline" 30

python3 - "$OUT" "$CONNECTIONS" "$RATE" "$BATCH" <<'PY' | tee "$OUT/compare.md"
import json, sys
out, conns, rate, batch = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
def load(name):
    return json.load(open(f"{out}/{name}.json"))
rows = []
def row(label, h, b, better, fmt="{:.0f}"):
    if h is None or b is None:
        ratio = "n/a"
    else:
        r = (h / b) if better == "higher" else (b / h if h else float("inf"))
        ratio = f"{r:,.1f}×"
    f = lambda v: "n/a" if v is None else fmt.format(v)
    rows.append(f"| {label} | {f(h)} | {f(b)} | {ratio} |")
H = {k: load(f"herald-{k}") for k in ("hold", "steady", "ramp", "single")}
B = {k: load(f"baseline-{k}") for k in ("hold", "steady", "ramp", "single")}
kib = lambda r: (r["derived"]["rss_per_connection_bytes"] or 0) / 1024
row(f"server RSS per idle connection, KiB ({conns} connections)", kib(H["hold"]), kib(B["hold"]), "lower", "{:.1f}")
row("connect + initial_state, connections/s", H["hold"]["connections"]["rate_per_s"], B["hold"]["connections"]["rate_per_s"], "higher")
row("time to initial_state p99, ms", H["hold"]["initial_state_us"]["p99"] / 1000, B["hold"]["initial_state_us"]["p99"] / 1000, "lower", "{:.1f}")
dps = lambda r: r["derived"]["deliveries_per_cpu_s"]
row("deliveries per server CPU-second, under load (the whole ramp)", dps(H["ramp"]), dps(B["ramp"]), "higher")
row(f"deliveries per server CPU-second at {rate}/s (idle time included)", dps(H["steady"]), dps(B["steady"]), "higher")
row(f"latency p99 at {rate}/s, ms", H["steady"]["latency_us"]["p99"] / 1000, B["steady"]["latency_us"]["p99"] / 1000, "lower", "{:.1f}")
best = lambda r: (r.get("ramp") or {}).get("best_rate")
row(f"targeted deliveries/s with p99 < 50 ms (batches of {batch})", best(H["ramp"]), best(B["ramp"]), "higher")
row("stored notifications/s with p99 < 50 ms, one per POST", best(H["single"]), best(B["single"]), "higher")
row("deliveries per server CPU-second, one per POST (the whole ramp)", dps(H["single"]), dps(B["single"]), "higher")
for name, r in (("Herald", H), ("baseline", B)):
    s = r["steady"]["delivery"]
    rows.append(f"| {name} steady run: delivered/expected, lost, duplicated, errors | "
                f"{s['delivered']}/{s['expected']}, {s['lost']}, {s['duplicated']}, {sum(r['steady']['errors'].values())} | | |")
print("| figure | Herald | baseline | Herald's advantage |")
print("|---|---|---|---|")
print("\n".join(rows))
PY
log "results in $OUT"
