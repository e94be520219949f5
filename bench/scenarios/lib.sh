# Shared by the scenario scripts (sourced, not run). A scenario starts everything it
# needs, keeps every step under `timeout`, and stops what it started on any exit:
# nodes and bench processes by pid, its PostgreSQL database and its Redis keys.
#
#   scenario_init <name>        OUT, DATA, secrets, the exit trap, machine.txt
#   build_release               cargo build --release (skipped with SKIP_BUILD=1)
#   use_postgres                a fresh database for this run: sets DATABASE_URL
#   use_redis                   a fresh key prefix on $REDIS_URL: sets HERALD_REDIS_PREFIX
#   start_node <i> <port> <admin_port> [VAR=value ...]
#                               one herald-server (soft fd limit raised), pid in NODE_PID[i]
#   start_nodes <n> <base port> <base admin port> [VAR=value ...]
#                               nodes 0..n-1, ready; `--server-pid` of each in SERVER_PIDS
#   admin <i> <METHOD> <path> [json]   the admin API of node i
#   bench_shards <name> <shards> <bench args...>
#                               herald-bench in <shards> processes, merged into $OUT/<name>.json
#                               (bench_shards_start + bench_shards_wait, to act in between)
#   set_sysctl <key> <value>    writes a sysctl, restored on exit; raise_sysctl only raises
#   on_exit <command>           runs at exit, after processes, database and keys are gone
# Settings every scenario takes: OUT (bench/results/<name>-<time>), SKIP_BUILD=1,
# REDIS_URL (redis://127.0.0.1:6379), PGHOST/PGPORT/PGUSER (127.0.0.1/5432/root),
# HERALD_SERVER_BIN (target/release/herald-server).

set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
# HERALD_SERVER_BIN runs another build of the node (before-after.sh: an older commit's).
SERVER=${HERALD_SERVER_BIN:-$ROOT/target/release/herald-server}
BENCH=$ROOT/target/release/herald-bench
REDIS_URL=${REDIS_URL:-redis://127.0.0.1:6379}
export PGHOST=${PGHOST:-127.0.0.1} PGPORT=${PGPORT:-5432} PGUSER=${PGUSER:-root}

declare -a NODE_PID=() NODE_PORT=() NODE_ADMIN=() BENCH_PIDS=() EXTRA_PIDS=() SERVER_PIDS=()
declare -a SYSCTL_SAVED=() EXIT_HOOKS=()
PG_DB=
REDIS_PREFIX=

rand_hex() { od -An -tx1 -N"${1:-16}" /dev/urandom | tr -d ' \n'; }

log() { echo "$SCENARIO: $*" >&2; }

scenario_init() {
    SCENARIO=$1
    OUT=${OUT:-$ROOT/bench/results/$SCENARIO-$(date -u +%Y%m%dT%H%M%SZ)}
    mkdir -p "$OUT"
    DATA=$(mktemp -d "/tmp/herald-$SCENARIO.XXXXXX")
    SECRET=$(rand_hex)
    API_KEY=$(rand_hex)
    ADMIN_TOKEN=$(rand_hex)
    trap scenario_cleanup EXIT
    trap 'exit 130' INT TERM
    {
        echo "machine: $(nproc) cores, $(awk '/MemTotal/{print $2" kB"}' /proc/meminfo), kernel $(uname -r)"
        echo "cpu: $(awk -F': ' '/model name/{print $2; exit}' /proc/cpuinfo)"
        echo "nofile soft/hard $(ulimit -Sn)/$(ulimit -Hn), port range $(tr '\t' '-' </proc/sys/net/ipv4/ip_local_port_range), somaxconn $(cat /proc/sys/net/core/somaxconn)"
        echo "commit: $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)$(git -C "$ROOT" diff --quiet 2>/dev/null || echo '+dirty')"
        echo "date: $(date -u +%FT%TZ)"
    } >"$OUT/machine.txt"
    sed "s/^/$SCENARIO: /" "$OUT/machine.txt" >&2
}

stop_pid() {
    local p=$1 grace=${2:-15}
    kill -0 "$p" 2>/dev/null || return 0
    kill -TERM "$p" 2>/dev/null || true
    for _ in $(seq 1 $((grace * 10))); do kill -0 "$p" 2>/dev/null || return 0; sleep 0.1; done
    kill -KILL "$p" 2>/dev/null || true
}

scenario_cleanup() {
    local rc=$?
    set +e
    for p in "${BENCH_PIDS[@]}" "${EXTRA_PIDS[@]}"; do kill -TERM "$p" 2>/dev/null; done
    for p in "${NODE_PID[@]}"; do kill -TERM "$p" 2>/dev/null; done
    for p in "${NODE_PID[@]}" "${BENCH_PIDS[@]}" "${EXTRA_PIDS[@]}"; do stop_pid "$p" 15; done
    if [[ -n $PG_DB ]]; then
        dropdb --if-exists "$PG_DB" 2>/dev/null || log "could not drop database $PG_DB"
    fi
    if [[ -n $REDIS_PREFIX ]]; then
        # Registry and presence keys are hash-tagged: `{<prefix>}:…`.
        redis-cli -u "$REDIS_URL" --scan --pattern "*$REDIS_PREFIX*" 2>/dev/null |
            xargs -r -n 500 redis-cli -u "$REDIS_URL" del >/dev/null 2>&1
    fi
    local h
    for ((h = ${#EXIT_HOOKS[@]} - 1; h >= 0; h--)); do eval "${EXIT_HOOKS[h]}"; done
    for ((h = ${#SYSCTL_SAVED[@]} - 2; h >= 0; h -= 2)); do
        echo "${SYSCTL_SAVED[h + 1]}" >"/proc/sys/${SYSCTL_SAVED[h]//.//}" ||
            log "could not restore ${SYSCTL_SAVED[h]} to ${SYSCTL_SAVED[h + 1]}"
    done
    rm -rf "$DATA"
    exit $rc
}

on_exit() { EXIT_HOOKS+=("$*"); }

sysctl_get() { tr -s '[:space:]' ' ' <"/proc/sys/${1//.//}" | sed 's/ $//'; }

# set_sysctl <key> <value>: writes /proc/sys/<key>; the first value seen is put back
# at exit (in reverse order).
set_sysctl() {
    local key=$1 value=$2 have
    have=$(sysctl_get "$key") || return 1
    [[ $have == "$value" ]] && return 0
    SYSCTL_SAVED+=("$key" "$have")
    echo "$value" >"/proc/sys/${key//.//}" || { log "could not set $key = $value"; return 1; }
    log "sysctl $key: $have -> $value"
}

# raise_sysctl <key> <value ...>: each number raised to at least the given one (a
# higher host value is kept), as ops/tuning/install.sh does for `>=` items.
raise_sysctl() {
    local key=$1 have want=() i f
    shift
    local floor=("$@")
    [[ -e /proc/sys/${key//.//} ]] || return 0
    read -ra have <<<"$(sysctl_get "$key")"
    for i in "${!have[@]}"; do
        f=${floor[i]:-0}
        want+=($((have[i] > f ? have[i] : f)))
    done
    set_sysctl "$key" "${want[*]}"
}

build_release() {
    if [[ ${SKIP_BUILD:-0} != 1 ]]; then
        (cd "$ROOT" && timeout 1800 cargo build --release -p herald-server -p herald-bench)
    fi
}

use_postgres() {
    PG_DB=herald_bench_${SCENARIO//-/_}_$$
    createdb "$PG_DB"
    DATABASE_URL=postgres://$PGUSER@$PGHOST:$PGPORT/$PG_DB
}

use_redis() {
    redis-cli -u "$REDIS_URL" ping >/dev/null || { log "Redis at $REDIS_URL is not answering"; exit 1; }
    REDIS_PREFIX=herald-bench-$SCENARIO-$$
}

port_free() { ! (exec 3<>"/dev/tcp/${2:-127.0.0.1}/$1") 2>/dev/null; }

# start_node <index> <port> <admin port> [VAR=value ...]: a release node on
# 127.0.0.1:<port>, SQLite in $DATA unless DATABASE_URL is set, Redis when
# use_redis was called. Extra VAR=value pairs go to its environment.
start_node() {
    local i=$1 port=$2 admin_port=$3
    shift 3
    port_free "$port" || { log "port $port is in use"; exit 1; }
    port_free "$admin_port" || { log "port $admin_port is in use"; exit 1; }
    (
        ulimit -Sn "$(ulimit -Hn)"
        export HERALD_NODE_ID=bench-$i HERALD_LISTEN=127.0.0.1:$port HERALD_ADMIN_LISTEN=127.0.0.1:$admin_port
        export HERALD_DATA_DIR=$DATA/node-$i DATABASE_URL=${DATABASE_URL:-sqlite://$DATA/herald.db}
        export HERALD_JWT_SECRET=$SECRET HERALD_API_KEY=$API_KEY HERALD_ADMIN_TOKEN=$ADMIN_TOKEN
        export HERALD_FD_RESERVE=${HERALD_FD_RESERVE:-200} HERALD_SHUTDOWN_DRAIN_S=${HERALD_SHUTDOWN_DRAIN_S:-1}
        export RUST_LOG=${RUST_LOG:-warn}
        if [[ -n $REDIS_PREFIX ]]; then export REDIS_URL HERALD_REDIS_PREFIX=$REDIS_PREFIX; fi
        for kv in "$@"; do export "${kv?}"; done
        mkdir -p "$HERALD_DATA_DIR"
        exec "$SERVER"
    ) >"$OUT/node-$i.out" 2>"$OUT/node-$i.log" &
    NODE_PID[i]=$!
    NODE_PORT[i]=$port
    NODE_ADMIN[i]=$admin_port
}

# start_nodes <n> <base port> <base admin port> [VAR=value ...]: nodes 0..n-1 on
# consecutive ports, started together, then each waited for; SERVER_PIDS holds
# `--server-pid <pid>` for each, for herald-bench.
start_nodes() {
    local count=$1 port=$2 admin_port=$3 n
    shift 3
    for ((n = 0; n < count; n++)); do
        start_node "$n" $((port + n)) $((admin_port + n)) "$@"
        SERVER_PIDS+=(--server-pid "${NODE_PID[n]}")
    done
    for ((n = 0; n < count; n++)); do wait_ready "$n"; done
}

# wait_ready <index>: /readyz answers 200 within 60 s, or the scenario fails.
wait_ready() {
    local i=$1
    for _ in $(seq 1 600); do
        curl -sf "http://127.0.0.1:${NODE_PORT[i]}/readyz" >/dev/null 2>&1 && return 0
        kill -0 "${NODE_PID[i]}" 2>/dev/null || { log "node $i exited; see $OUT/node-$i.log"; exit 1; }
        sleep 0.1
    done
    log "node $i not ready in 60 s; see $OUT/node-$i.log"
    exit 1
}

admin() {
    local i=$1 method=$2 path=$3 body=${4:-}
    curl -s -X "$method" -H "Authorization: Bearer $ADMIN_TOKEN" \
        ${body:+-H 'content-type: application/json' -d "$body"} \
        "http://127.0.0.1:${NODE_ADMIN[i]}$path"
}

# The comma-separated base URLs of the nodes given by index.
node_urls() {
    local out=() i
    for i in "$@"; do out+=("http://127.0.0.1:${NODE_PORT[i]}"); done
    (IFS=,; echo "${out[*]}")
}

# bench_shards <name> <shards> <bench args...>: runs `herald-bench` as <shards>
# processes (each with --shard i/n and --json $OUT/<name>-<i>.json), in parallel,
# bounded by BENCH_TIMEOUT seconds (600), then merges them into $OUT/<name>.json and
# prints the summary line. Arguments may hold {i} (the shard index). Fails if any
# shard fails.
bench_shards() {
    bench_shards_start "$@"
    bench_shards_wait "$1"
}

# bench_shards_start <name> <shards> <bench args...>: starts the shards (pids in
# BENCH_PIDS) and returns at once.
bench_shards_start() {
    local name=$1 shards=$2
    shift 2
    local i
    for ((i = 0; i < shards; i++)); do
        local args=("${@//\{i\}/$i}")
        ( ulimit -Sn "$(ulimit -Hn)"
          exec timeout "${BENCH_TIMEOUT:-600}" "$BENCH" "${args[@]}" --shard "$i/$shards" \
              --json "$OUT/$name-$i.json"
        ) >"$OUT/$name-$i.out" 2>"$OUT/$name-$i.err" &
        BENCH_PIDS+=($!)
    done
}

# bench_shards_wait <name>: waits for the shards bench_shards_start started, then
# merges and prints as bench_shards does.
bench_shards_wait() {
    local name=$1 p fail=0
    for p in "${BENCH_PIDS[@]}"; do wait "$p" || fail=1; done
    BENCH_PIDS=()
    if (( fail )); then
        log "a bench process failed; see $OUT/$name-*.err"
        tail -n 3 "$OUT/$name"-*.err >&2
        return 1
    fi
    "$BENCH" merge "$OUT/$name"-*.json --json "$OUT/$name.json" | tee "$OUT/$name.txt"
}

# json_get <file> <jq-ish dotted path>: a number from a report (python3, no jq here).
json_get() {
    python3 -c 'import json,sys
v=json.load(open(sys.argv[1]))
for k in sys.argv[2].split("."):
    v=v[int(k)] if isinstance(v,list) else v.get(k) if v is not None else None
print("" if v is None else v)' "$1" "$2"
}

# Prints each step of the ramp report $1 (a merged herald-bench JSON) and the best
# passing rate; the scenario tees it into steps.txt.
print_ramp_steps() {
    python3 - "$1" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))["ramp"]
for s in r["steps"]:
    d = s["delivery"]
    print(f'{s["rate"]:>9.0f}/s achieved {s["achieved_rate"]:>9.0f}/s p50 {s["p50_us"]/1000:7.1f} ms '
          f'p99 {s["p99_us"]/1000:7.1f} ms delivered {d["delivered"]}/{d["expected"]} '
          f'{"pass" if s["pass"] else "FAIL: " + (s["reason"] or "")}')
print("best:", r["best_rate"])
PY
}
