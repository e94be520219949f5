#!/usr/bin/env bash
# Runs the baseline (Django Channels + channels_redis + PostgreSQL under uvicorn) in
# the foreground for one benchmark run. Stop it with Ctrl-C or SIGTERM.
#
# Environment (all optional but the first three):
#   BASELINE_PG_DB        database to use; created if missing, migrated (required)
#   HERALD_JWT_SECRET     HS256 secret of client tokens (herald-bench --jwt-secret)
#   HERALD_API_KEY        backend API key (herald-bench --api-key)
#   HOST, PORT            listen address (127.0.0.1, 18100)
#   WORKERS               uvicorn worker processes (default: nproc, one per core)
#   BASELINE_REDIS_PREFIX channels_redis prefix (default: baseline_<BASELINE_PG_DB>)
#   REDIS_URL             redis://127.0.0.1:6379/0
#   BASELINE_PG_HOST/PORT/USER   127.0.0.1 / 5432 / root (trust auth)
#   PIDFILE               once every worker is up: master pid, then one worker pid per
#                         line (WORKERS=1: uvicorn serves in-process, one line)
#   DROP_DB_ON_EXIT=1     drop the database on exit
#   KEEP_REDIS_KEYS=1     keep the prefix's channels_redis keys (default: deleted at
#                         start and exit, so that no stale group member survives a run)
#   WS_IMPL               uvicorn --ws implementation (default websockets)
# Extra arguments are passed to uvicorn as they are.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
venv="$here/.venv"
py="$venv/bin/python"
if [[ ! -x "$venv/bin/uvicorn" || ! -f "$venv/.requirements.sha256" ]]; then
    echo "baseline: no virtualenv at $venv: run $here/install.sh first" >&2
    exit 2
fi

: "${BASELINE_PG_DB:?set BASELINE_PG_DB to the database to use (created if missing)}"
: "${HERALD_JWT_SECRET:?set HERALD_JWT_SECRET (the bench's --jwt-secret)}"
: "${HERALD_API_KEY:?set HERALD_API_KEY (the bench's --api-key)}"
if [[ ! "$BASELINE_PG_DB" =~ ^[A-Za-z_][A-Za-z0-9_]*$ ]]; then
    echo "baseline: BASELINE_PG_DB must be a plain identifier" >&2
    exit 2
fi
HOST="${HOST:-127.0.0.1}"
PORT="${PORT:-18100}"
WORKERS="${WORKERS:-$(nproc)}"
WS_IMPL="${WS_IMPL:-websockets}"
export BASELINE_PG_HOST="${BASELINE_PG_HOST:-127.0.0.1}"
export BASELINE_PG_PORT="${BASELINE_PG_PORT:-5432}"
export BASELINE_PG_USER="${BASELINE_PG_USER:-root}"
export BASELINE_REDIS_PREFIX="${BASELINE_REDIS_PREFIX:-baseline_$BASELINE_PG_DB}"
export REDIS_URL="${REDIS_URL:-redis://127.0.0.1:6379/0}"
export BASELINE_PG_DB HERALD_JWT_SECRET HERALD_API_KEY
export DJANGO_SETTINGS_MODULE=seed.settings
export PYTHONDONTWRITEBYTECODE=1
pg=(-h "$BASELINE_PG_HOST" -p "$BASELINE_PG_PORT" -U "$BASELINE_PG_USER")

# Deletes this prefix's channels_redis keys: groups ("<prefix>:group:*") and the
# per-process queues ("<prefix>specific.*").
redis_clean() {
    [[ "${KEEP_REDIS_KEYS:-0}" == 1 ]] && return 0
    "$py" - <<'PY' || true
import os, redis
r = redis.Redis.from_url(os.environ["REDIS_URL"])
p = os.environ["BASELINE_REDIS_PREFIX"]
n = 0
for pattern in (p + ":group:*", p + "specific.*"):
    keys = list(r.scan_iter(match=pattern, count=1000))
    for i in range(0, len(keys), 500):
        n += r.delete(*keys[i:i + 500])
if n:
    print(f"baseline: deleted {n} channels_redis keys of prefix {p!r}")
PY
}

# Refuse a busy port before touching (or, on exit, cleaning)
# the database or Redis: another run may own them.
if "$py" -c "import socket,sys; s=socket.socket(); s.settimeout(1); sys.exit(s.connect_ex(('$HOST', $PORT)) != 0)"; then
    echo "baseline: something already listens on $HOST:$PORT" >&2
    exit 1
fi

master=""
ready_dir=""
cleaned=0
created=0
serving=0
cleanup() {
    [[ $cleaned == 1 ]] && return
    cleaned=1
    trap - TERM INT EXIT
    if [[ -n "$master" ]] && kill -0 "$master" 2>/dev/null; then
        kill -TERM "$master" 2>/dev/null || true
        for _ in $(seq 1 150); do
            kill -0 "$master" 2>/dev/null || break
            sleep 0.1
        done
        if kill -0 "$master" 2>/dev/null; then
            echo "baseline: uvicorn did not stop in 15 s, killing it" >&2
            for w in $(pgrep -P "$master" || true); do kill -KILL "$w" 2>/dev/null || true; done
            kill -KILL "$master" 2>/dev/null || true
        fi
        wait "$master" 2>/dev/null || true
    fi
    [[ -n "${PIDFILE:-}" ]] && rm -f "$PIDFILE"
    [[ -n "$ready_dir" ]] && rm -rf "$ready_dir"
    redis_clean
    # Never drop a database this run neither created nor served (say a second
    # serve.sh started on a busy port with another run's database).
    if [[ "${DROP_DB_ON_EXIT:-0}" == 1 && ($created == 1 || $serving == 1) ]]; then
        dropdb "${pg[@]}" --if-exists --force "$BASELINE_PG_DB" &&
            echo "baseline: dropped database $BASELINE_PG_DB"
    fi
}
trap cleanup EXIT
trap 'cleanup; exit 143' TERM
trap 'cleanup; exit 130' INT

if [[ -z "$(psql "${pg[@]}" -d postgres -tAc "SELECT 1 FROM pg_database WHERE datname = '$BASELINE_PG_DB'")" ]]; then
    createdb "${pg[@]}" "$BASELINE_PG_DB"
    created=1
    echo "baseline: created database $BASELINE_PG_DB"
fi
"$py" "$here/seed/manage.py" migrate --noinput -v 0
redis_clean

# As many descriptors as this host allows (one per WebSocket, plus Redis and PG).
ulimit -Sn "$(ulimit -Hn)"

# Each worker touches $BASELINE_READY_DIR/<pid> once it has loaded the application.
ready_dir="$(mktemp -d)"
export BASELINE_READY_DIR="$ready_dir"

cd "$here/seed"
"$venv/bin/uvicorn" seed.asgi:application \
    --host "$HOST" --port "$PORT" --workers "$WORKERS" \
    --loop uvloop --http httptools --ws "$WS_IMPL" \
    --ws-max-size 65536 --ws-ping-interval 25 --ws-ping-timeout 20 \
    --lifespan off --timeout-graceful-shutdown 10 \
    --no-access-log --log-level warning "$@" &
master=$!

# Workers are the master's children started through multiprocessing's spawn_main
# (not its resource tracker). With WORKERS=1 uvicorn serves from the one process.
workers() {
    local p
    if ((WORKERS == 1)); then
        echo "$master"
        return 0
    fi
    for p in $(pgrep -P "$master" || true); do
        grep -qa spawn_main "/proc/$p/cmdline" 2>/dev/null && echo "$p"
    done
    return 0
}

deadline=$((SECONDS + 60))
while :; do
    if ! kill -0 "$master" 2>/dev/null; then
        echo "baseline: uvicorn exited during start-up" >&2
        exit 1
    fi
    ws=($(workers))
    up=0
    for w in "${ws[@]}"; do [[ -e "$ready_dir/$w" ]] && up=$((up + 1)); done
    if ((up >= WORKERS)) && "$py" -c "import urllib.request,sys; urllib.request.urlopen('http://$HOST:$PORT/healthz', timeout=2)" 2>/dev/null; then
        break
    fi
    if ((SECONDS > deadline)); then
        echo "baseline: workers not up after 60 s ($up of $WORKERS)" >&2
        exit 1
    fi
    sleep 0.2
done
if [[ -n "${PIDFILE:-}" ]]; then
    if ((WORKERS == 1)); then ws=(); fi
    printf '%s\n' "$master" "${ws[@]}" > "$PIDFILE.tmp"
    mv "$PIDFILE.tmp" "$PIDFILE"
fi
serving=1
echo "baseline: serving on http://$HOST:$PORT (uvicorn $master, workers ${ws[*]:-(in-process)}; db $BASELINE_PG_DB, redis prefix $BASELINE_REDIS_PREFIX)"

# Wake up for signals while waiting (bash runs traps only between commands).
while kill -0 "$master" 2>/dev/null; do
    wait "$master" || true
done
echo "baseline: uvicorn exited" >&2
exit 1
