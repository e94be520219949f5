#!/usr/bin/env bash
# Rolling upgrade of a Herald fleet with herald-console, one node at a time, with no
# SSH and no lost notification.
#
#   REDIS_URL=redis://10.0.0.5:6379 HERALD_ADMIN_TOKEN=... \
#     ops/rolling-upgrade.sh /tmp/herald-server-0.2.0
#
# What it does:
#   1. Checks: the new binary runs and says its version; every node of the fleet is
#      reachable and serving (a rollout over a fleet already short of a node would
#      take a second one out at the same time).
#   2. Installs the new binary at $HERALD_INSTALL_PATH (atomically; the old one is
#      kept as <path>.prev for a rollback). Running nodes keep the old binary until
#      they restart. Set HERALD_INSTALL_PATH= (empty) when your restart command
#      deploys the binary itself (an image, a package, an Ansible play...).
#   3. herald-console rollout: for each node in turn (sorted by id),
#        a. drain it over $HERALD_DRAIN_WINDOW seconds (its clients are closed with
#           1012 a few at a time and resume on the other nodes with `after`, so they
#           miss nothing) and wait until it is drained;
#        b. run the restart command, $HERALD_RESTART with {node} = the node id
#           (default `systemctl restart herald-server@{node}`, a template unit per
#           node), then this script's own check (`--verify`): the node answers again
#           and reports the new version;
#        c. wait until it is back, undrain it, wait until /readyz is 200;
#        d. next node.
#      The first failure stops everything and names the node and the step; that node
#      is left drained (out of service) for you to look at, the others keep serving.
#   4. Prints the fleet's status.
#
# Environment:
#   HERALD_ADMIN_TOKEN   admin token of the nodes (required)
#   REDIS_URL            Redis of the node registry; or list admin URLs instead:
#   HERALD_NODES         space-separated admin URLs (http://host:9091 ...), for a
#                        fleet without Redis or nodes not in the registry
#   HERALD_REDIS_PREFIX  the nodes' registry prefix (default herald)
#   HERALD_CONSOLE       the herald-console binary (default: herald-console on PATH)
#   HERALD_INSTALL_PATH  where the unit's ExecStart binary lives
#                        (default /usr/local/bin/herald-server; empty: do not install)
#   HERALD_RESTART       restart command, {node} = node id
#                        (default: systemctl restart herald-server@{node}). It must
#                        return once the old process has exited and the new one is
#                        started (systemctl restart does), not before.
#   HERALD_DRAIN_WINDOW  seconds over which a node's connections are closed (default 30)
#   HERALD_STEP_TIMEOUT  longest wait for each step: drained, back, ready (default 120s)
#
# Rollback: run it again with the previous binary:
#   ops/rolling-upgrade.sh /usr/local/bin/herald-server.prev
# (copy it elsewhere first: installing overwrites .prev).
set -euo pipefail

console="${HERALD_CONSOLE:-herald-console}"
install_path="${HERALD_INSTALL_PATH-/usr/local/bin/herald-server}"
default_restart='systemctl restart herald-server@{node}'
restart="${HERALD_RESTART:-$default_restart}"
window="${HERALD_DRAIN_WINDOW:-30}"
step_timeout="${HERALD_STEP_TIMEOUT:-120s}"

die() { echo "rolling-upgrade: $*" >&2; exit 1; }
say() { printf '\n== %s\n' "$*"; }

# Where herald-console finds the nodes: the registry (REDIS_URL, read by the console
# itself) and/or explicit admin URLs.
node_flags=()
for url in ${HERALD_NODES:-}; do node_flags+=(--node "$url"); done

# `herald-console status` as a table: NODE STATE VERSION ...; prints "<id> <state>
# <version>" per node.
fleet() { "$console" "${node_flags[@]}" status | awk 'NR > 1 && !/^ / {print $1, $2, $3}'; }

# --verify NODE VERSION: run by the rollout right after the restart command. Waits
# (up to the step timeout) until NODE answers and reports VERSION; a failure stops
# the rollout at this node, which stays drained.
if [ "${1:-}" = "--verify" ]; then
  node="$2" want="$3"
  limit=${step_timeout%s}
  [[ "$limit" =~ ^[0-9]+$ ]] || limit=120
  for _ in $(seq 1 "$limit"); do
    have=$(fleet | awk -v n="$node" '$1 == n {print $3}')
    [ "$have" = "$want" ] && { echo "$node: reports version $have"; exit 0; }
    sleep 1
  done
  die "$node did not come back with version $want (last seen: ${have:-nothing})"
fi

[ $# -eq 1 ] || die "usage: $0 NEW_HERALD_SERVER_BINARY"
new="$1"
[ -n "${HERALD_ADMIN_TOKEN:-}" ] || die "HERALD_ADMIN_TOKEN is not set"
[ -n "${REDIS_URL:-}" ] || [ ${#node_flags[@]} -gt 0 ] || die "set REDIS_URL or HERALD_NODES"
command -v "$console" >/dev/null || die "no herald-console ($console); set HERALD_CONSOLE"

# 1. Checks.
say "new binary"
[ -x "$new" ] || die "$new is not an executable"
version=$("$new" --version | awk '{print $2}')   # "herald-server 0.2.0"
[ -n "$version" ] || die "$new --version says nothing"
echo "$new: version $version"

say "fleet before"
"$console" "${node_flags[@]}" status
not_serving=$(fleet | awk '$2 != "serving" {print $1 " (" $2 ")"}')
[ -z "$not_serving" ] || die "not every node is serving: $not_serving; fix that first"
[ -n "$(fleet)" ] || die "no nodes found"

# 2. Install the binary the restarted units will run.
if [ -n "$install_path" ]; then
  say "installing $new as $install_path"
  install -m 0755 "$new" "$install_path.new"
  if [ -e "$install_path" ]; then cp -p "$install_path" "$install_path.prev"; fi
  mv -f "$install_path.new" "$install_path"   # atomic: running nodes keep their inode
fi

# 3. The rollout. The restart command and the version check run for each node in
#    turn; {node} is replaced by herald-console.
self=$(cd "$(dirname "$0")" && pwd)/$(basename "$0")
exec_cmd="$restart && '$self' --verify {node} '$version'"
say "rollout (window ${window} s): $exec_cmd"
if ! "$console" "${node_flags[@]}" rollout \
    --exec "$exec_cmd" --window "$window" --step-timeout "$step_timeout"; then
  echo
  "$console" "${node_flags[@]}" status || true
  die "rollout stopped (see above). The node it stopped at is drained; once fixed:
  $console undrain <node>   and run this script again (restarted nodes are just restarted again)."
fi

# 4. Done.
say "fleet after"
"$console" "${node_flags[@]}" status
echo
echo "rolling upgrade to $version done"
