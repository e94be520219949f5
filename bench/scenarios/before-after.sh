#!/usr/bin/env bash
# The node at an older commit against the current one: same host, same run, same
# scenario scripts and load generator, before and after taking turns per scenario.
# This is where the before/after figures of bench/RESULTS.md come from.
#
#   bench/scenarios/before-after.sh                  # ca8d946 vs HEAD: idle-hold, fanout-ramp, broadcast
#   BEFORE=9d5ac56 SCENARIOS=idle-hold bench/scenarios/before-after.sh
#
# Settings: BEFORE (ca8d946: the commit the scenarios arrived in, before the store,
# session and broker work they prompted), SCENARIOS (idle-hold fanout-ramp broadcast;
# any script here that takes the notify defaults). The older node is built from a git
# worktree into target/before/ (its own target directory, so the first build takes a
# few minutes). Results: bench/results/before-after-<time>/{<scenario>-before,-after}/
# and summary.txt.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
source "$here/lib.sh"
root=$ROOT

BEFORE=${BEFORE:-ca8d946}
SCENARIOS=${SCENARIOS:-idle-hold fanout-ramp broadcast}
out=$root/bench/results/before-after-$(date -u +%Y%m%dT%H%M%SZ)
wt=$root/target/before/src
mkdir -p "$out"

before=$(git -C "$root" rev-parse --short "$BEFORE")
after=$(git -C "$root" rev-parse --short HEAD)$(git -C "$root" diff --quiet HEAD || echo +dirty)
build_release
rm -rf "$wt"
git -C "$root" worktree prune
git -C "$root" worktree add --detach "$wt" "$before" >&2
trap 'git -C "$root" worktree remove --force "$wt"' EXIT
(cd "$wt" && CARGO_TARGET_DIR=$root/target/before timeout 1800 cargo build --release -p herald-server)

for s in $SCENARIOS; do
    for side in before after; do
        if [[ $side == before ]]; then
            bin=$root/target/before/release/herald-server commit=$before
        else
            bin=$root/target/release/herald-server commit=$after
        fi
        echo "== $s, $side ($commit)" | tee -a "$out/summary.txt"
        OUT=$out/$s-$side SKIP_BUILD=1 HERALD_SERVER_BIN=$bin timeout 1200 "$here/$s.sh" 2>&1 |
            grep -E "^herald-bench merge|best:|FAIL" | tee -a "$out/summary.txt" || {
            echo "== $s, $side failed: see $out/$s-$side" | tee -a "$out/summary.txt"
        }
        echo "$commit" >"$out/$s-$side/server-commit.txt"
    done
done
echo "before-after: results in $out" >&2
