#!/usr/bin/env bash
# Runs the README's quick tour and its CI and deployment walkthrough as a newcomer would: in a
# fresh clone, with only the `wharf` binary on the PATH, no WHARF_* variables and an empty
# config directory, against a `wharf dev` on a free port. Fails at the first step that fails,
# so the README cannot drift from the code (tests/newcomer.rs runs it).
#
# The blocks run are those under a `<!-- newcomer.sh: run -->` line in README.md, as written,
# with four changes only: `cargo install` is skipped (the binary is already built),
# `wharf dev &` gets `--listen` on the free port and waits until it serves, 127.0.0.1:8080
# becomes that port, and /tmp/ becomes a scratch directory. curl fails on an HTTP error.
#
#   scripts/newcomer.sh               WHARF_BIN defaults to target/release/wharf, else target/debug/wharf
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
if [ -z "${WHARF_BIN:-}" ]; then
    if [ -x "$repo/target/release/wharf" ]; then WHARF_BIN=$repo/target/release/wharf; else WHARF_BIN=$repo/target/debug/wharf; fi
fi
WHARF_BIN=$(cd "$(dirname "$WHARF_BIN")" && pwd)/$(basename "$WHARF_BIN")
[ -x "$WHARF_BIN" ] || { echo "newcomer.sh: no wharf binary at $WHARF_BIN (cargo build -p wharf)" >&2; exit 1; }

work=$(mktemp -d)
dev_pid=
cleanup() {
    if [ -n "$dev_pid" ]; then
        kill -INT "$dev_pid" 2>/dev/null || true
        wait "$dev_pid" 2>/dev/null || true
    fi
    rm -rf "$work"
}
trap cleanup EXIT

port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
git clone -q "$repo" "$work/wharf"
# The README as it is in this work tree, committed or not: the text under test.
cp "$repo/README.md" "$work/wharf/README.md"
mkdir -p "$work/tmp" "$work/config" "$work/bin"
ln -s "$WHARF_BIN" "$work/bin/wharf"

# The blocks to run, from the clone's README, with the changes named above.
awk '
    /^<!-- newcomer.sh: run -->$/ { armed = 1; next }
    armed && /^```sh$/ { inside = 1; armed = 0; next }
    inside && /^```$/ { inside = 0; print ""; next }
    inside { print }
' "$work/wharf/README.md" \
    | sed -e 's|^cargo install .*|: "wharf is on the PATH already"|' \
          -e 's|^wharf dev &.*|wharf dev --listen 127.0.0.1:8080 >"$NEWCOMER_WORK/dev.log" 2>\&1 \& dev_pid=$!; wait_for_dev|' \
          -e "s|127\.0\.0\.1:8080|127.0.0.1:$port|g" \
          -e 's|/tmp/|$NEWCOMER_WORK/tmp/|g' \
    > "$work/tour.sh"
[ -s "$work/tour.sh" ] || { echo "newcomer.sh: no block marked to run in README.md" >&2; exit 1; }

cat > "$work/prelude.sh" <<'EOF'
set -euo pipefail
curl() { command curl --fail-with-body --max-time 60 "$@"; echo; }
wait_for_dev() {
    for _ in $(seq 1 300); do
        if grep -q "wharf: serving on" "$NEWCOMER_WORK/dev.log" 2>/dev/null; then return 0; fi
        if ! kill -0 "$dev_pid" 2>/dev/null; then cat "$NEWCOMER_WORK/dev.log" >&2; return 1; fi
        sleep 0.1
    done
    echo "newcomer.sh: wharf dev did not start in 30 s" >&2
    return 1
}
# Keep the dev server's pid where the outer script can stop it.
trap 'if [ -n "${dev_pid:-}" ]; then kill -INT "$dev_pid" 2>/dev/null; wait "$dev_pid" 2>/dev/null; fi' EXIT
set -x
EOF

echo "newcomer.sh: running $(grep -c '' "$work/tour.sh") lines of README.md in $work/wharf against port $port"
cd "$work/wharf"
status=0
env -u WHARF_URL -u WHARF_TOKEN -u WHARF_COOKIE \
    PATH="$work/bin:$PATH" \
    NEWCOMER_WORK="$work" \
    XDG_CONFIG_HOME="$work/config" \
    GIT_AUTHOR_NAME=Newcomer GIT_AUTHOR_EMAIL=newcomer@example.com \
    GIT_COMMITTER_NAME=Newcomer GIT_COMMITTER_EMAIL=newcomer@example.com \
    GIT_CONFIG_NOSYSTEM=1 GIT_CONFIG_GLOBAL=/dev/null \
    bash -c 'source "$NEWCOMER_WORK/prelude.sh"; source "$NEWCOMER_WORK/tour.sh"' </dev/null || status=$?
if [ "$status" -ne 0 ]; then
    echo "newcomer.sh: a step of the README failed (exit $status); the server's log:" >&2
    tail -n 40 "$work/dev.log" >&2 || true
    exit "$status"
fi
# A clean run and a clean shutdown log no error.
if grep -n " ERROR " "$work/dev.log" >&2; then
    echo "newcomer.sh: wharf dev logged the errors above" >&2
    exit 1
fi
echo "newcomer.sh: every step of the README worked"
