#!/usr/bin/env bash
# Restarts every node of the local cluster started by scripts/cluster.sh, one at a time, with
# no failed request: drain it (its repositories move to the others), restart it, undrain it,
# and wait until the cluster is healthy and balanced again before the next one.
#
# Takes the same settings as scripts/cluster.sh (WHARF_CLUSTER_DIR, WHARF_BIN, ...); the
# restarted nodes read the cluster's cookie from $WHARF_CLUSTER_DIR/cookie, as cluster.sh does.
set -euo pipefail
cd "$(dirname "$0")/.."

DIR=${WHARF_CLUSTER_DIR:-./wharf-cluster}
if [ -z "${WHARF_BIN:-}" ]; then
    if [ -x target/release/wharf ]; then WHARF_BIN=target/release/wharf; else WHARF_BIN=target/debug/wharf; fi
fi
export WHARF_URL WHARF_TOKEN
WHARF_URL=$(cat "$DIR/front.url")
WHARF_TOKEN=$(cat "$DIR/node1/admin-token")

nodes=$(ls "$DIR" | sed -n 's/^node\([0-9]*\)\.pid$/\1/p' | sort -n)
[ -n "$nodes" ] || { echo "rolling-restart.sh: no running nodes in $DIR" >&2; exit 1; }
total=$(echo "$nodes" | wc -l)
done_count=0
for id in $nodes; do
    echo "== node $id ($((done_count + 1)) of $total): drain"
    "$WHARF_BIN" cluster drain "$id"
    echo "== node $id: restart"
    scripts/cluster.sh restart-node "$id"
    echo "== node $id: undrain"
    "$WHARF_BIN" cluster undrain "$id"
    "$WHARF_BIN" cluster wait --timeout 300
    done_count=$((done_count + 1))
done
echo "rolling restart of $total nodes done"
