#!/usr/bin/env bash
# Every scenario behind bench/RESULTS.md, one after another, with the settings the
# results were recorded with; each leaves its reports in bench/results/<name>-<time>/
# and prints its summary line. Builds once, then reuses the binaries.
#
#   bench/scenarios/all.sh                 # about 25 minutes on a 2-core machine
#   ONLY="idle-hold broadcast" bench/scenarios/all.sh
#
# The 200,000-connection cluster run is left out (it needs 22 processes and 4.5
# minutes on its own): NODES=11 CONNECTIONS=200000 RATE=2000 HERALD_DB_POOL=6
# bench/scenarios/cluster.sh. So is million.sh (a million connections, about 15
# minutes, most of the box's memory, and it retunes the box and may restart
# PostgreSQL): run it alone, on a quiet box.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
source "$here/lib.sh"

build_release
export SKIP_BUILD=1

run() {
    local name=$1
    shift
    if [[ -n ${ONLY:-} && " $ONLY " != *" $name "* ]]; then return 0; fi
    echo "== $name: $*" >&2
    env "$@" "$here/${name%%:*}.sh" 2>&1 | grep -E "^herald-bench merge|results in|best:|^\|" || {
        echo "== $name failed" >&2
        return 1
    }
}

run idle-hold
run fanout-ramp
run fanout-ramp:event MODE=event START=30000 FACTOR=1.08
run single-post
run single-post:postgres STORE=postgres
run single-post:three-nodes NODES=3
run broadcast
run broadcast:two-nodes NODES=2 CONNECTIONS=20000
run reconnect-storm
run cluster NODES=6 CONNECTIONS=105000
run compare
