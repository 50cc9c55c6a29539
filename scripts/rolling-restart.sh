#!/usr/bin/env bash
# Restarts every storage node the cluster reports (GET /api/v1/cluster), one at a time, with no
# failed request: drain it (its repositories move to the others), restart it, undrain it, and
# wait until the cluster is healthy and balanced again before the next one.
#
# How a node is restarted:
#   - one started by scripts/cluster.sh (a pid file in $WHARF_CLUSTER_DIR): cluster.sh restart-node;
#   - one started by hand on this machine (found by the process listening on its cluster
#     address): stopped with SIGTERM and started again with the same command line, working
#     directory and environment; its output then goes to $WHARF_CLUSTER_DIR/nodeI.log and its
#     pid to nodeI.pid, so that cluster.sh down stops it too;
#   - any other (on another machine): the command in WHARF_RESTART_CMD, run with the node's id
#     as its argument (say WHARF_RESTART_CMD='ssh-restart-wharf'), which must return once the
#     node has been started again.
# Every member is checked before the first is touched: if one cannot be restarted, the script
# says which and changes nothing.
#
# Takes the same settings as scripts/cluster.sh (WHARF_CLUSTER_DIR, WHARF_BIN, ...). The
# cluster's cookie is the file $WHARF_CLUSTER_DIR/cookie (./wharf-cluster/cookie by default),
# which cluster.sh wrote; the nodes it restarts read it from there.
set -euo pipefail
cd "$(dirname "$0")/.."

DIR=${WHARF_CLUSTER_DIR:-./wharf-cluster}
if [ -z "${WHARF_BIN:-}" ]; then
    if [ -x target/release/wharf ]; then WHARF_BIN=target/release/wharf; else WHARF_BIN=target/debug/wharf; fi
fi
export WHARF_URL WHARF_TOKEN
WHARF_URL=${WHARF_URL:-$(cat "$DIR/front.url")}
WHARF_TOKEN=${WHARF_TOKEN:-$(cat "$DIR/node1/admin-token")}

# Every storage node the cluster reports: "ID ADDRESS" lines.
members=$(curl -fsS -H "Authorization: Bearer $WHARF_TOKEN" "$WHARF_URL/api/v1/cluster" |
    python3 -c 'import json, sys
for node in json.load(sys.stdin)["nodes"]:
    print(node["id"], node["addr"])')
[ -n "$members" ] || { echo "rolling-restart.sh: the cluster at $WHARF_URL reports no nodes" >&2; exit 1; }

# listener_pid PORT: the process listening on this machine's TCP port PORT, if any.
listener_pid() {
    ss -Hltnp "sport = :$1" 2>/dev/null | sed -n 's/.*pid=\([0-9]*\).*/\1/p' | head -n 1
}

# How each node is restarted, decided before anything changes.
declare -A how
unknown=""
while read -r id addr; do
    if [ -f "$DIR/node$id.pid" ] && kill -0 "$(cat "$DIR/node$id.pid")" 2>/dev/null; then
        how[$id]=script
    elif [ -n "$(listener_pid "${addr##*:}")" ]; then
        how[$id]=local
    elif [ -n "${WHARF_RESTART_CMD:-}" ]; then
        how[$id]=command
    else
        unknown="$unknown node $id ($addr)"
    fi
done <<< "$members"
if [ -n "$unknown" ]; then
    echo "rolling-restart.sh: cannot restart$unknown: not started by cluster.sh nor listening on this machine; set WHARF_RESTART_CMD to a command that restarts a node given its id. Nothing was changed." >&2
    exit 1
fi

# wait_for_line FILE TEXT
source scripts/wait-for-line.sh

# restart_local ID ADDRESS: stops the process listening on ADDRESS's port and starts it again
# as it was started.
restart_local() {
    local id=$1 port=${2##*:} pid cwd
    pid=$(listener_pid "$port")
    local -a command environment
    mapfile -d '' command < "/proc/$pid/cmdline"
    mapfile -d '' environment < "/proc/$pid/environ"
    cwd=$(readlink "/proc/$pid/cwd")
    kill -TERM "$pid"
    for _ in $(seq 1 600); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
    : > "$DIR/node$id.log"
    (cd "$cwd" && exec env -i "${environment[@]}" "${command[@]}") < /dev/null >> "$DIR/node$id.log" 2>&1 &
    echo $! > "$DIR/node$id.pid"
    wait_for_line "$DIR/node$id.log" "wharf: node $id ready"
}

total=$(echo "$members" | wc -l)
done_count=0
while read -r id addr; do
    echo "== node $id ($((done_count + 1)) of $total, $addr): drain"
    "$WHARF_BIN" cluster drain "$id" < /dev/null
    echo "== node $id: restart (${how[$id]})"
    case "${how[$id]}" in
    script) scripts/cluster.sh restart-node "$id" < /dev/null ;;
    local) restart_local "$id" "$addr" ;;
    command) $WHARF_RESTART_CMD "$id" < /dev/null ;;
    esac
    echo "== node $id: undrain"
    "$WHARF_BIN" cluster undrain "$id" < /dev/null
    "$WHARF_BIN" cluster wait --timeout 300 < /dev/null
    done_count=$((done_count + 1))
done <<< "$members"
echo "rolling restart of $total nodes done"
