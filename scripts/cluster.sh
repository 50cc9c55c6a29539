#!/usr/bin/env bash
# A local Wharf cluster on 127.0.0.1: N storage nodes and one front, as background processes.
#
#   scripts/cluster.sh up [N]          start nodes 1..N (default 3) and a front; prints the URL
#   scripts/cluster.sh down            stop everything (SIGTERM, then wait)
#   scripts/cluster.sh restart-node I  stop node I and start it again on its data
#   scripts/cluster.sh status          wharf cluster status
#
# Settings (environment):
#   WHARF_CLUSTER_DIR  state, data and logs        (default ./wharf-cluster)
#   WHARF_BASE_PORT    node I listens on BASE+I, the front's cluster port is BASE+100
#                                                  (default 7100)
#   WHARF_HTTP_PORT    the front's HTTP port       (default 8080)
#   WHARF_BIN          the wharf binary            (default target/release/wharf, else target/debug/wharf)
#   WHARF_COOKIE       the cluster cookie          (default: a random one, kept in $DIR/cookie,
#                                                  mode 0600, passed to each process as
#                                                  --cookie-file, never on a command line)
set -euo pipefail
cd "$(dirname "$0")/.."

DIR=${WHARF_CLUSTER_DIR:-./wharf-cluster}
BASE=${WHARF_BASE_PORT:-7100}
HTTP=${WHARF_HTTP_PORT:-8080}
if [ -z "${WHARF_BIN:-}" ]; then
    if [ -x target/release/wharf ]; then WHARF_BIN=target/release/wharf; else WHARF_BIN=target/debug/wharf; fi
fi
[ -x "$WHARF_BIN" ] || { echo "cluster.sh: no wharf binary at $WHARF_BIN (cargo build --release -p wharf)" >&2; exit 1; }

mkdir -p "$DIR"
# The cookie lives in a file only Wharf's user can read; each process reads it through
# WHARF_COOKIE_FILE. A WHARF_COOKIE from the caller is written there first.
if [ -n "${WHARF_COOKIE:-}" ]; then
    (umask 077; printf '%s\n' "$WHARF_COOKIE" > "$DIR/cookie")
    unset WHARF_COOKIE
elif [ ! -f "$DIR/cookie" ]; then
    (umask 077; head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' > "$DIR/cookie")
fi
export WHARF_COOKIE_FILE="$DIR/cookie"

# wait_for_line FILE TEXT
source scripts/wait-for-line.sh

start_node() {
    local id=$1 join=${2:-}
    local args=(node --id "$id" --data-dir "$DIR/node$id" --listen "127.0.0.1:$((BASE + id))")
    [ -n "$join" ] && args+=(--join "$join")
    : > "$DIR/node$id.log"
    "$WHARF_BIN" "${args[@]}" >> "$DIR/node$id.log" 2>&1 &
    echo $! > "$DIR/node$id.pid"
    wait_for_line "$DIR/node$id.log" "wharf: node $id ready"
    echo "node $id ready on 127.0.0.1:$((BASE + id)) (pid $(cat "$DIR/node$id.pid"))"
}

stop_pid_file() {
    local file=$1
    [ -f "$file" ] || return 0
    local pid
    pid=$(cat "$file")
    if kill -TERM "$pid" 2>/dev/null; then
        for _ in $(seq 1 600); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$pid" 2>/dev/null || true
    fi
    rm -f "$file"
}

case "${1:-}" in
up)
    n=${2:-3}
    start_node 1
    for id in $(seq 2 "$n"); do start_node "$id" "127.0.0.1:$((BASE + 1))"; done
    : > "$DIR/front.log"
    "$WHARF_BIN" front --id 100 --data-dir "$DIR/front" --listen "127.0.0.1:$((BASE + 100))" \
        --http "127.0.0.1:$HTTP" --join "127.0.0.1:$((BASE + 1))" >> "$DIR/front.log" 2>&1 &
    echo $! > "$DIR/front.pid"
    wait_for_line "$DIR/front.log" "wharf: serving on"
    sed -n 's/^wharf: serving on //p' "$DIR/front.log" | head -n 1 > "$DIR/front.url"
    echo "front serving on $(cat "$DIR/front.url"); admin token in $DIR/node1/admin-token"
    ;;
down)
    stop_pid_file "$DIR/front.pid"
    for file in "$DIR"/node*.pid; do [ -e "$file" ] && stop_pid_file "$file"; done
    echo "cluster stopped"
    ;;
restart-node)
    id=${2:?which node}
    stop_pid_file "$DIR/node$id.pid"
    start_node "$id"
    ;;
status)
    "$WHARF_BIN" cluster --url "$(cat "$DIR/front.url")" --token "$(cat "$DIR/node1/admin-token")" status
    ;;
*)
    sed -n '2,20p' "$0"
    exit 2
    ;;
esac
