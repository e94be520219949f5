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
# any script here that takes the notify defaults), ROUNDS (1: how many times the
# two take turns per scenario; with more, summary.txt ends with each figure's median
# per side, since one pair on this host can differ by 25% either way). The older node is built from a git
# worktree into target/before/ (its own target directory, so the first build takes a
# few minutes). Results: bench/results/before-after-<time>/{<scenario>-before,-after}/
# and summary.txt.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
source "$here/lib.sh"
root=$ROOT

BEFORE=${BEFORE:-ca8d946}
SCENARIOS=${SCENARIOS:-idle-hold fanout-ramp broadcast}
ROUNDS=${ROUNDS:-1}
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
    for round in $(seq 1 "$ROUNDS"); do
        for side in before after; do
            if [[ $side == before ]]; then
                bin=$root/target/before/release/herald-server commit=$before
            else
                bin=$root/target/release/herald-server commit=$after
            fi
            dir=$out/$s-$side label="== $s, $side ($commit)"
            if ((ROUNDS > 1)); then dir+="-$round" label+=", round $round"; fi
            echo "$label" | tee -a "$out/summary.txt"
            OUT=$dir SKIP_BUILD=1 HERALD_SERVER_BIN=$bin timeout 1200 "$here/$s.sh" 2>&1 |
                grep -E "^herald-bench merge|best:|FAIL" | tee -a "$out/summary.txt" || {
                echo "== $s, $side failed: see $dir" | tee -a "$out/summary.txt"
            }
            echo "$commit" >"$dir/server-commit.txt"
        done
    done
done
if ((ROUNDS > 1)); then
    # Medians over the rounds of what each side's merged reports derived.
    python3 - "$out" <<'PY' | tee -a "$out/summary.txt"
import json, pathlib, statistics, sys
out = pathlib.Path(sys.argv[1])
rows = {}
for report in sorted(out.glob("*-*-*/*.json")):
    if report.name.startswith("status") or "-" in report.stem:
        continue
    scenario, side, _round = report.parent.name.rsplit("-", 2)
    derived = json.loads(report.read_text()).get("derived") or {}
    for key, value in derived.items():
        if isinstance(value, (int, float)):
            rows.setdefault((scenario, report.stem, key), {}).setdefault(side, []).append(value)
for (scenario, report, key), sides in sorted(rows.items()):
    cells = [f"{side} median {statistics.median(v):.1f} of {len(v)}" for side, v in sorted(sides.items(), reverse=True)]
    print(f"median {scenario}/{report} {key}: " + ", ".join(cells))
PY
fi
echo "before-after: results in $out" >&2
