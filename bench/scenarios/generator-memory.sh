#!/usr/bin/env bash
# Generator memory: what holding an idle connection costs herald-bench itself. One
# release node; each given generator build in turn (ROUNDS times, taking turns) dials
# CONNECTIONS connections from one process, holds them HOLD seconds, publishes at RATE
# for DURATION seconds if RATE > 0, and closes them. Printed per run: the generator's
# RSS growth from just before dialing to connected, per connection (`bench rss/conn`),
# its CPU while connecting, and with RATE its CPU per delivery.
#
#   bench/scenarios/generator-memory.sh                                  # this build
#   bench/scenarios/generator-memory.sh before=/tmp/herald-bench-old after=target/release/herald-bench
#   CONNECTIONS=5000 HOLD=1 RATE=20000 DURATION=15 ROUNDS=3 bench/scenarios/generator-memory.sh before=... after=...
#
# A build older than the `bench rss/conn` figure has no such field: the script
# computes it from the JSON's generator samples. Settings: CONNECTIONS (19000), HOLD
# s (5), ROUNDS (2), RATE notifications/s (0), DURATION s (10), SOURCES (127.0.0.2,127.0.0.3,127.0.0.4), PORT (18040),
# ADMIN_PORT (19040), CONNECT_CONCURRENCY (512). Results in $OUT: <label>-<round>.json.
source "$(dirname "$0")/lib.sh"

CONNECTIONS=${CONNECTIONS:-19000}
HOLD=${HOLD:-5}
ROUNDS=${ROUNDS:-2}
RATE=${RATE:-0}
DURATION=${DURATION:-10}
SOURCES=${SOURCES:-127.0.0.2,127.0.0.3,127.0.0.4}
PORT=${PORT:-18040}
ADMIN_PORT=${ADMIN_PORT:-19040}
(($# > 0)) || set -- "current=$BENCH"

scenario_init generator-memory
build_release
start_nodes 1 "$PORT" "$ADMIN_PORT" HERALD_MAX_CONNECTIONS=$((CONNECTIONS + 500))
for ((r = 0; r < ROUNDS; r++)); do
    for spec in "$@"; do
        label=${spec%%=*} bin=${spec#*=}
        ( ulimit -Sn "$(ulimit -Hn)"
          exec timeout $((120 + HOLD + ${DURATION%.*} + CONNECTIONS / 200)) "$bin" run --node "$(node_urls 0)" \
              --jwt-secret "$SECRET" --api-key "$API_KEY" -c "$CONNECTIONS" --source "$SOURCES" \
              --rate "$RATE" --duration "$DURATION" --hold "$HOLD" --connect-concurrency "${CONNECT_CONCURRENCY:-512}" \
              --connect-timeout 60 --json "$OUT/$label-$r.json"
        ) >"$OUT/$label-$r.out" 2>"$OUT/$label-$r.err" || { log "$label failed; see $OUT/$label-$r.err"; exit 1; }
        python3 - "$OUT/$label-$r.json" "$label" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
g, c = r["generator"][0], r["connections"]
kib = (g["connected"]["rss_kib"] - g["before"]["rss_kib"]) / c["established"]
d = r["delivery"]
line = (f'{sys.argv[2]:>12}: {c["established"]}/{c["attempted"]} connected, errors {sum(r["errors"].values())}, '
        f'generator RSS {g["before"]["rss_kib"]} -> {g["connected"]["rss_kib"]} KiB, '
        f'bench rss/conn={kib:.2f}KiB, connect CPU {g["connected"]["cpu_s"] - g["before"]["cpu_s"]:.2f} s')
if d["delivered"]:
    run = g["after"]["cpu_s"] - g["connected"]["cpu_s"]
    line += (f', delivered {d["delivered"]}/{d["expected"]} (dup {d["duplicated"]}), '
             f'generator CPU {run * 1e6 / d["delivered"]:.2f} us/delivery')
print(line)
PY
        sleep 2
    done
done | tee "$OUT/summary.txt"
log "results in $OUT"
