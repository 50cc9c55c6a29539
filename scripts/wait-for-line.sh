# Sourced by scripts/cluster.sh and scripts/rolling-restart.sh.
#
# wait_for_line FILE TEXT: waits (60 s at most) until FILE has a line containing TEXT; if it
# does not, prints FILE's end and fails, naming the script that asked.
wait_for_line() {
    for _ in $(seq 1 600); do
        grep -q "$2" "$1" 2>/dev/null && return 0
        sleep 0.1
    done
    echo "${0##*/}: '$2' did not appear in $1 within 60 s; its end:" >&2
    tail -n 20 "$1" >&2
    return 1
}
