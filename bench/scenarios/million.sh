#!/usr/bin/env bash
# One million connections on this box (issue 17). NODES nodes on PostgreSQL + Redis,
# each holding what one process's 20,000 files allow (~19,300), as many generator
# processes, CONNECTIONS clients from SOURCES. Then one notification to each user
# (the batch API, `--once`) and one event to a group every connection joined, which
# spans every node (`--also-broadcast`). It reports connections held, failures,
# connect rate, memory per connection (server: the nodes' RSS; generator: the
# generators' RSS; kernel: Slab, and the drop of MemAvailable, before against
# connected), delivery (lost, duplicated) and latency of both phases, Redis INFO
# commandstats over the idle hold (presence rewrites, heartbeats), and how long
# `herald-console status --json` takes with every node holding its connections.
#
#   bench/scenarios/million.sh                              # 52 nodes, 1,000,000
#   NODES=8 CONNECTIONS=100000 bench/scenarios/million.sh   # a small check
#
# It tunes the box for the run and puts it back on every exit (the lib.sh trap):
# the sysctls of ops/tuning/profile.conf, computed by ops/tuning/install.sh (a higher
# host value is kept), and the limits two sockets per connection reach (conntrack,
# file-max, tcp_mem, orphans at teardown). When NODES × HERALD_DB_POOL does not fit
# PostgreSQL's max_connections, it raises it (ALTER SYSTEM, then a restart of the
# local cluster, and the same back at exit): a restart drops every other client of
# that PostgreSQL, so run it on a quiet box. Both need root; TUNE=0 skips them.
# The generators stop dialing when MemAvailable falls below MIN_AVAILABLE_MIB (the
# run goes on and reports with what it holds); below ABORT_MIB, or after DEADLINE
# seconds, a watchdog ends the run (cleanup included).
#
# It runs a Redis of its own (OWN_REDIS=1) for the nodes, on REDIS_PORT, logging to
# $OUT/redis.log: a shared Redis stopped in the middle of an earlier full run and left
# no word of why. At the end of the notification phase it records INFO clients, stats
# and memory (and whether it still answered) in $OUT/redis-end.txt, and the summary
# says loudly if it was gone; at exit, how the process ended, in $OUT/redis-exit.txt.
#
# Not in all.sh: at full size it takes ~15 minutes and most of the box's memory.
#
# Settings: NODES (52), CONNECTIONS (1000000), SHARDS generator processes (NODES),
# RATE notifications/s over all shards (5000: with a million connections held, a 2-core
# box has no CPU left for more; at 20000 the full run's notification phase failed with
# the box out of CPU), HOLD s idle after every shard is connected (30), SETTLE s for
# deliveries (60), CONNECT_CONCURRENCY dials in flight per generator (16: each node
# then has 16 in flight against a pool of 2, within the pool's 3 s acquire timeout;
# pool 1 and 64 timed out 5% of the openings at 52 nodes), SOURCES (127.0.0.100-199),
# BASE_PORT (38000), BASE_ADMIN (39000), HERALD_DB_POOL (2), MIN_AVAILABLE_MIB (1536),
# ABORT_MIB (768), DEADLINE s (1140), TUNE (1), OWN_REDIS (1; 0 uses the shared
# $REDIS_URL), REDIS_PORT of the own Redis (6390), WORKERS tokio worker threads per
# node and generator process (1: over a hundred processes share two cores, and a
# second worker per process only adds wake-ups of idle threads to steal work).
source "$(dirname "$0")/lib.sh"

# The nodes read HERALD_WORKER_THREADS; the generators (herald-bench) are plain tokio.
export HERALD_WORKER_THREADS=${WORKERS:-1} TOKIO_WORKER_THREADS=${WORKERS:-1}

NODES=${NODES:-52}
CONNECTIONS=${CONNECTIONS:-1000000}
SHARDS=${SHARDS:-$NODES}
RATE=${RATE:-5000}
HOLD=${HOLD:-30}
SETTLE=${SETTLE:-60}
SOURCES=${SOURCES:-$(seq -s, -f '127.0.0.%g' 100 199)}
BASE_PORT=${BASE_PORT:-38000}
BASE_ADMIN=${BASE_ADMIN:-39000}
POOL=${HERALD_DB_POOL:-2}
MIN_AVAILABLE_MIB=${MIN_AVAILABLE_MIB:-1536}
ABORT_MIB=${ABORT_MIB:-768}
DEADLINE=${DEADLINE:-1140}
TUNE=${TUNE:-1}
OWN_REDIS=${OWN_REDIS:-1}
REDIS_PORT=${REDIS_PORT:-6390}
REDIS_PID=
CONSOLE=$ROOT/target/release/herald-console

per_node=$(( (CONNECTIONS + NODES - 1) / NODES ))
per_shard=$(( (CONNECTIONS + SHARDS - 1) / SHARDS ))
if (( per_node > $(ulimit -Hn) - 400 || per_shard > $(ulimit -Hn) - 400 )); then
    echo "million: $per_node connections per node and $per_shard per generator do not fit" \
        "$(ulimit -Hn) files per process: raise NODES / SHARDS" >&2
    exit 1
fi

scenario_init million
build_release

# --- the box ---------------------------------------------------------------------

tune_sysctls() {
    local root=$DATA/tuning key eq value
    HERALD_INSTALL_ROOT=$root "$ROOT/ops/tuning/install.sh" >/dev/null
    while read -r key eq value; do
        [[ $key == \#* || -z $key ]] && continue
        set_sysctl "$key" "$value"
    done <"$root/etc/sysctl.d/60-herald.conf"
    # Two sockets per connection, plus everything else the box has open.
    raise_sysctl fs.file-max $((2 * CONNECTIONS + 200000))
    raise_sysctl net.netfilter.nf_conntrack_max $((2 * CONNECTIONS + 65536))
    # Closing everything at once orphans up to one socket per connection.
    raise_sysctl net.ipv4.tcp_max_orphans "$CONNECTIONS"
    # Pages: pressure at 3 GiB, hard limit 4 GiB of socket buffers (a broadcast queues
    # a frame on every socket at once; idle sockets hold almost none).
    raise_sysctl net.ipv4.tcp_mem 524288 786432 1048576
}

# The local PostgreSQL cluster on $PGPORT, as "<version> <name>" for pg_ctlcluster.
pg_cluster() { pg_lsclusters -h | awk -v p="$PGPORT" '$3 == p { print $1, $2; exit }'; }

pg_restart() {
    # shellcheck disable=SC2046
    timeout 120 pg_ctlcluster $(pg_cluster) restart
    for _ in $(seq 1 100); do psql -d postgres -Atc 'select 1' >/dev/null 2>&1 && return 0; sleep 0.2; done
    log "PostgreSQL did not come back after the restart"
    return 1
}

# Raises max_connections when the nodes' pools (plus what others hold) do not fit.
tune_postgres() {
    local have need prev
    have=$(psql -d postgres -Atc 'show max_connections')
    need=$(( NODES * POOL + $(psql -d postgres -Atc 'select count(*) from pg_stat_activity') + 30 ))
    (( need <= have )) && return 0
    [[ -n $(pg_cluster) ]] || { log "max_connections $have < $need and no local cluster on port $PGPORT"; exit 1; }
    prev=$(psql -d postgres -Atc "select setting from pg_file_settings
        where name = 'max_connections' and sourcefile like '%postgresql.auto.conf' order by seqno desc limit 1")
    if [[ -n $prev ]]; then
        on_exit "psql -d postgres -qc 'alter system set max_connections = $prev' && pg_restart"
    else
        on_exit "psql -d postgres -qc 'alter system reset max_connections' && pg_restart"
    fi
    log "PostgreSQL max_connections: $have -> $need (restarting the local cluster)"
    psql -d postgres -qc "alter system set max_connections = $need"
    pg_restart
}

if [[ $TUNE == 1 ]]; then
    tune_sysctls
    tune_postgres
fi

# The watchdog: ends the run (through the exit trap) past DEADLINE seconds, or when
# MemAvailable falls below ABORT_MIB, whatever the generators are doing.
(
    end=$((SECONDS + DEADLINE))
    while sleep 1; do
        avail=$(awk '/MemAvailable/ { print int($2 / 1024) }' /proc/meminfo)
        if (( avail < ABORT_MIB )); then
            echo "million: MemAvailable ${avail} MiB < ${ABORT_MIB} MiB: stopping the run" >&2
            kill -TERM $$; exit
        fi
        if (( SECONDS > end )); then
            echo "million: past the deadline of ${DEADLINE} s: stopping the run" >&2
            kill -TERM $$; exit
        fi
    done
) &
EXTRA_PIDS+=($!)

# --- Redis -----------------------------------------------------------------------

# start_own_redis: a redis-server for this run only, on 127.0.0.1:$REDIS_PORT, in
# memory only, logging to $OUT/redis.log; REDIS_URL points at it. Stopped by an exit
# hook, which runs once the nodes are gone (so they deregister against a live Redis),
# after recording whether it was still running.
start_own_redis() {
    port_free "$REDIS_PORT" || { log "port $REDIS_PORT (REDIS_PORT) is in use"; exit 1; }
    # A few connections per node (commands, the pub/sub subscriber, presence), the
    # console and redis-cli, and room to spare.
    local maxclients=$((NODES * 8 + 100))
    # The pub/sub output limit: a node's subscriber that falls behind while the two
    # cores are overloaded (a broadcast queues a frame for every node at once) must
    # not be cut off: Redis closing it makes that node resync every session from the
    # store, which adds load exactly when there is none to spare. Redis's default
    # (32mb 8mb 60) closes it; this bounds it at 256 MiB hard, 64 MiB for 60 s.
    (
        ulimit -Sn "$(ulimit -Hn)"
        exec redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save "" --appendonly no \
            --logfile "$OUT/redis.log" --loglevel notice --maxclients "$maxclients" \
            --client-output-buffer-limit "pubsub 256mb 64mb 60"
    ) >/dev/null 2>&1 &
    REDIS_PID=$!
    on_exit stop_own_redis
    REDIS_URL=redis://127.0.0.1:$REDIS_PORT
    for _ in $(seq 1 100); do
        redis-cli -u "$REDIS_URL" ping >/dev/null 2>&1 && break
        kill -0 "$REDIS_PID" 2>/dev/null || { log "redis-server exited at start; see $OUT/redis.log"; exit 1; }
        sleep 0.1
    done
    log "own Redis: pid $REDIS_PID at $REDIS_URL (maxclients $maxclients), log $OUT/redis.log"
}

# Whether the own Redis process is running and answers a PING, as one line.
redis_state() {
    if [[ $OWN_REDIS == 1 ]] && ! kill -0 "$REDIS_PID" 2>/dev/null; then
        echo "redis: DEAD (process $REDIS_PID gone)"
    elif [[ $(timeout 5 redis-cli -u "$REDIS_URL" ping 2>/dev/null) == PONG ]]; then
        echo "redis: answering"
    else
        echo "redis: NOT ANSWERING"
    fi
}

# The exit hook: how the process ended (still running, or its exit status), then a
# clean stop.
stop_own_redis() {
    {
        date -u +%FT%TZ
        redis_state
        if kill -0 "$REDIS_PID" 2>/dev/null; then
            timeout 5 redis-cli -u "$REDIS_URL" info server 2>/dev/null | grep -E '^(uptime_in_seconds|process_id):' || true
        else
            wait "$REDIS_PID" 2>/dev/null
            echo "exit status: $? (128 + n: killed by signal n; 137 is SIGKILL, which the OOM killer sends)"
            dmesg 2>/dev/null | grep -iE "(killed process|oom).*\b$REDIS_PID\b" || true
        fi
    } >"$OUT/redis-exit.txt" 2>&1
    stop_pid "$REDIS_PID" 15
}

# --- the cluster -----------------------------------------------------------------

use_postgres
if [[ $OWN_REDIS == 1 ]]; then start_own_redis; fi
use_redis
start_nodes "$NODES" "$BASE_PORT" "$BASE_ADMIN" \
    HERALD_MAX_CONNECTIONS=$((per_node + 200)) HERALD_DB_POOL="$POOL"

# rss_sum <pid ...>: total VmRSS, KiB.
rss_sum() {
    local p t=0 r
    for p in "$@"; do
        r=$(awk '/^VmRSS/ { print $2 }' "/proc/$p/status" 2>/dev/null) && t=$((t + ${r:-0}))
    done
    echo "$t"
}

# The generators themselves: bench_shards_start's pids are `timeout`s.
generator_pids() { local p; for p in "${BENCH_PIDS[@]}"; do pgrep -P "$p"; done; }

# mem_snapshot <label>: the box's memory, and the nodes' and generators' RSS, KiB.
mem_snapshot() {
    {
        awk '/^(MemAvailable|Slab|SUnreclaim|SReclaimable):/ { sub(":", "", $1); print $1, $2 }' /proc/meminfo
        awk '$1 == "TCP:" { print "tcp_sockets", $3; print "tcp_mem_pages", $NF }' /proc/net/sockstat
        echo "server_rss $(rss_sum "${NODE_PID[@]}")"
        # shellcheck disable=SC2046
        echo "generator_rss $(rss_sum $(generator_pids))"
    } >"$OUT/mem-$1.txt"
}

# cpu_ticks <pid ...>: user + system clock ticks of those processes.
cpu_ticks() {
    local p t=0 f
    for p in "$@"; do
        # Fields 14 and 15 of /proc/<pid>/stat, counted after the command's parentheses.
        f=$(sed 's/.*) //' "/proc/$p/stat" 2>/dev/null) || continue
        set -- $f
        t=$((t + ${12} + ${13}))
    done
    echo "$t"
}

# cpu_snapshot <label>: what the box and each part of the run have used so far, in
# clock ticks: over the idle hold, what holding the connections costs (pings, presence
# rewrites, heartbeats) before a single notification.
cpu_snapshot() {
    {
        echo "time_ms $(($(date +%s%N) / 1000000))"
        echo "ticks_per_s $(getconf CLK_TCK)"
        awk '$1 == "cpu" { print "box_busy", $2 + $3 + $4 + $7 + $8; print "box_all", $2 + $3 + $4 + $5 + $6 + $7 + $8 }' /proc/stat
        echo "server $(cpu_ticks "${NODE_PID[@]}")"
        # shellcheck disable=SC2046
        echo "generator $(cpu_ticks $(generator_pids))"
        # shellcheck disable=SC2046
        echo "postgres $(cpu_ticks $(pgrep -u postgres))"
        if [[ $OWN_REDIS == 1 ]]; then echo "redis $(cpu_ticks "$REDIS_PID")"; fi
    } >"$OUT/cpu-$1.txt"
}

# Not fatal: a Redis that stopped mid-run must still leave a summary saying so.
redis_stats() {
    { date +%s; redis-cli -u "$REDIS_URL" info commandstats; redis-cli -u "$REDIS_URL" info memory; } \
        >"$OUT/redis-$1.txt" 2>&1 || log "Redis did not answer INFO ($1): $(redis_state)"
}

# At the end of the notification phase, before anything is cleaned up: whether Redis
# still answers, and its clients (a subscriber cut off?), stats (rejected
# connections, evictions) and memory.
redis_end() {
    {
        date +%s
        redis_state
        for section in clients stats memory; do
            timeout 10 redis-cli -u "$REDIS_URL" info "$section" 2>&1 || true
        done
    } >"$OUT/redis-end.txt"
    log "at the end of the run: $(sed -n 2p "$OUT/redis-end.txt")"
}

# --- the run ---------------------------------------------------------------------

# Slab pages an earlier run's sockets left in the caches would hide this run's growth:
# give back the reclaimable ones (dentries and inodes; no page cache) first.
if [[ $TUNE == 1 ]]; then sync; echo 2 >/proc/sys/vm/drop_caches; sleep 2; fi
mem_snapshot before
redis_stats before
mkdir -p "$DATA/barrier"
urls=$(node_urls $(seq 0 $((NODES - 1))))
BENCH_TIMEOUT=$((DEADLINE - 60)) bench_shards_start million "$SHARDS" run \
    --node "$urls" --api-url "$urls" --jwt-secret "$SECRET" --api-key "$API_KEY" \
    -c "$CONNECTIONS" --source "$SOURCES" --mode notify --batch 1000 --once \
    --also-broadcast million_all --rate "$RATE" --hold "$HOLD" --settle "$SETTLE" \
    --connect-timeout 120 --connect-concurrency "${CONNECT_CONCURRENCY:-16}" \
    --min-available-mib "$MIN_AVAILABLE_MIB" --barrier-dir "$DATA/barrier" \
    "${SERVER_PIDS[@]}"

# Every shard connected (or gave up) and is holding: the memory of the connected box,
# the console over the whole fleet, and Redis over the hold.
while (( $(find "$DATA/barrier" -name 'connected-*' | wc -l) < SHARDS )); do
    for p in "${BENCH_PIDS[@]}"; do
        kill -0 "$p" 2>/dev/null || { log "a generator ended early; see $OUT/million-*.err"; break 2; }
    done
    sleep 1
done
sleep 3
mem_snapshot connected
cpu_snapshot connected
redis_stats connected
# herald-console status --json over the whole fleet, as ops would run it: once as
# the last connections arrive (the box still busy with the connect burst), then twice
# more over the hold, while Redis's latency is measured below.
console_status() {
    local start
    start=$(date +%s%N)
    "$CONSOLE" --redis "$REDIS_URL" --prefix "$REDIS_PREFIX" --token "$ADMIN_TOKEN" \
        status --json >"$OUT/console-status-$1.json" 2>"$OUT/console-status-$1.err" || true
    echo "$(( ($(date +%s%N) - start) / 1000000 ))" >"$OUT/console-status-$1.ms"
}
if [[ -x $CONSOLE ]]; then
    console_status 1
    (sleep $((HOLD / 3)); console_status 2; sleep $((HOLD / 3)); console_status 3) &
    console_pid=$!
fi
# Redis's own answer time over the rest of the hold (a PING every 10 ms): what the
# presence rewrites and heartbeats of every node cost everyone else on it.
redis-cli -u "$REDIS_URL" --latency --raw -i $((HOLD > 10 ? HOLD - 8 : 2)) \
    >"$OUT/redis-latency.txt" 2>/dev/null || true
cpu_snapshot held
if [[ -n ${console_pid:-} ]]; then wait "$console_pid" || true; fi
redis_stats held

bench_shards_wait million || true
redis_end
for ((n = 0; n < NODES; n++)); do admin "$n" GET /admin/status >"$OUT/status-$n.json"; done

python3 - "$OUT" "$HOLD" "$OWN_REDIS" <<'PY' | tee "$OUT/summary.txt"
import json, os, sys
out, hold, own_redis = sys.argv[1], float(sys.argv[2]), sys.argv[3] == "1"
try:
    redis_end = open(os.path.join(out, "redis-end.txt")).read().splitlines()[1]
except (OSError, IndexError):
    redis_end = "redis: state not recorded"
if redis_end != "redis: answering":
    print("!" * 78)
    print(f"!!! {redis_end.upper()} AT THE END OF THE RUN: the figures below are not a clean run")
    print(f"!!! see {out}/redis.log and {out}/redis-end.txt" if own_redis else f"!!! see {out}/redis-end.txt")
    print("!" * 78)
def kv(name):
    d = {}
    for l in open(os.path.join(out, name)):
        k, v = l.split()[:2]
        d[k] = int(v)
    return d
rep = json.load(open(os.path.join(out, "million.json")))
c = rep["connections"]
n = max(c["established"], 1)
b, a = kv("mem-before.txt"), kv("mem-connected.txt")
print(f'connections held {c["established"]} of {c["attempted"]}, failed {c["failed"]}, '
      f'retried {c.get("retries", 0)} (refused dials tried again), '
      f'open at end {c["open_at_end"]}, connect {c["rate_per_s"]:.0f}/s over {c["wall_s"]:.0f} s'
      + (' (dialing stopped at the memory floor)' if c.get("stopped_at_memory_floor") else ''))
print("errors:", rep["errors"] or "none")
per = lambda x: f'{x * 1024 / n:,.0f} B'
print(f'memory per connection: server {per(a["server_rss"] - b["server_rss"])} (node RSS growth), '
      f'generator {per(a["generator_rss"])} (generator RSS), '
      f'kernel {per(a["Slab"] - b["Slab"])} (Slab growth), '
      f'MemAvailable drop {per(b["MemAvailable"] - a["MemAvailable"])}; '
      f'MemAvailable left {a["MemAvailable"] // 1024} MiB')
print(f'totals: nodes {a["server_rss"] // 1024} MiB, generators {a["generator_rss"] // 1024} MiB, '
      f'Slab {b["Slab"] // 1024} -> {a["Slab"] // 1024} MiB, TCP sockets {a["tcp_sockets"]}')
try:
    c0, c1 = kv("cpu-connected.txt"), kv("cpu-held.txt")
    secs = (c1["time_ms"] - c0["time_ms"]) / 1000
    tick = c1["ticks_per_s"]
    cores = lambda k: (c1[k] - c0[k]) / tick / secs
    parts = [k for k in ("server", "generator", "postgres", "redis") if k in c1]
    busy = (c1["box_busy"] - c0["box_busy"]) / max(c1["box_all"] - c0["box_all"], 1)
    print(f'idle hold, {secs:.0f} s: the box {busy:.0%} busy; in cores: '
          + ", ".join(f'{k} {cores(k):.2f}' for k in parts)
          + f'; server + generator {(cores("server") + cores("generator")) * 1e6 / n:.2f} µs per connection per second')
except (OSError, KeyError, ValueError) as e:
    print("idle hold CPU: not measured:", e)
d, l = rep["delivery"], rep["latency_us"]
print(f'notify once: accepted {rep["publish"]["accepted"]} at {rep["publish"]["achieved_rate"]:.0f}/s, '
      f'delivered {d["delivered"]}/{d["expected"]} lost {d["lost"]} dup {d["duplicated"]}, '
      f'latency p50 {l["p50"] / 1000:.1f} ms p99 {l["p99"] / 1000:.1f} ms max {l["max"] / 1000:.1f} ms')
if rep.get("broadcast"):
    bc = rep["broadcast"]; d, l = bc["delivery"], bc["latency_us"]
    print(f'broadcast: accepted {bc["publish"]["accepted"]}, delivered {d["delivered"]}/{d["expected"]} '
          f'lost {d["lost"]} dup {d["duplicated"]}, latency p50 {l["p50"] / 1000:.1f} ms '
          f'p99 {l["p99"] / 1000:.1f} ms max {l["max"] / 1000:.1f} ms')
for i, when in ((1, "as the last connections arrived"), (2, "during the hold"), (3, "later in the hold")):
    try:
        ms = int(open(os.path.join(out, f"console-status-{i}.ms")).read())
        nodes = json.load(open(os.path.join(out, f"console-status-{i}.json")))
        up = sum(1 for x in nodes if x.get("status"))
        print(f'herald-console status --json {when}: {len(nodes)} nodes ({up} answered) in {ms} ms')
    except (OSError, ValueError) as e:
        print(f"herald-console status --json {when}: not measured:", e)
def stats(name):
    s = {}
    for l in open(os.path.join(out, name)):
        if l.startswith("cmdstat_"):
            k, v = l.strip()[8:].split(":", 1)
            f = dict(x.split("=") for x in v.split(","))
            s[k] = (int(f["calls"]), int(f["usec"]))
    return s
def used_memory(name):
    for l in open(os.path.join(out, name)):
        if l.startswith("used_memory:"):
            return int(l.split(":")[1])
    return None
others = "" if own_redis else "; other users of it included"
before, connected = used_memory("redis-before.txt"), used_memory("redis-connected.txt")
if before is None or connected is None:
    print("redis used_memory: not measured (Redis did not answer INFO)")
else:
    print(f'redis used_memory: {connected / 2**20:.0f} MiB with every connection, '
          f'{(connected - before) / n:,.0f} B per connection (subscriptions, presence{others})')
s0, s1 = stats("redis-connected.txt"), stats("redis-held.txt")
window = int(open(os.path.join(out, "redis-held.txt")).readline()) - int(open(os.path.join(out, "redis-connected.txt")).readline())
rows = sorted(((s1[k][1] - s0.get(k, (0, 0))[1], s1[k][0] - s0.get(k, (0, 0))[0], k) for k in s1), reverse=True)
try:
    lo, hi, avg, samples = open(os.path.join(out, "redis-latency.txt")).read().split()
    print(f"redis PING over the hold: max {hi} ms, avg {avg} ms ({samples} samples)")
except (OSError, ValueError):
    print("redis PING over the hold: not measured")
print(f"redis over {window} s of the hold (the whole server{others}): " + ", ".join(
    f'{k} {calls} calls {usec / 1000:.0f} ms' for usec, calls, k in rows[:6] if calls))
print(redis_end if redis_end == "redis: answering" else f"!!! {redis_end.upper()} AT THE END OF THE RUN !!!")
PY
log "results in $OUT"
