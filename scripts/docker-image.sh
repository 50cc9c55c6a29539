#!/usr/bin/env bash
# Builds the Docker image `wharf:local` without a registry: a root filesystem holding the wharf
# binary, git (and its helper programs), kill, sh and prlimit, and exactly the shared libraries `ldd`
# says they need, plus a minimal userland for CI jobs: a static busybox with a link for each of
# its applets (mkdir, cp, mv, rm, cat, sed, grep, awk, tar, gzip, wget, ...), imported with
# `docker import`.
#
#   scripts/docker-image.sh [WHARF_BINARY] [TAG]
#
# WHARF_BINARY defaults to target/release/wharf (built if missing); TAG to wharf:local. The
# busybox comes from WHARF_BUSYBOX, else `busybox` on the PATH, and must be statically linked:
# on Debian or Ubuntu, `apt-get install busybox-static`.
set -euo pipefail
cd "$(dirname "$0")/.."

binary=${1:-target/release/wharf}
tag=${2:-wharf:local}
if [ ! -x "$binary" ]; then
    cargo build --locked --release -p wharf
fi

root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT

busybox_bin=${WHARF_BUSYBOX:-$(type -P busybox || true)}
if [ -z "$busybox_bin" ] || ldd "$busybox_bin" > /dev/null 2>&1; then
    echo "docker-image.sh: jobs need a userland: no static busybox found (${busybox_bin:-none on the PATH}); apt-get install busybox-static, or set WHARF_BUSYBOX" >&2
    exit 1
fi

git_bin=$(command -v git)
git_exec=$(git --exec-path)
kill_bin=$(type -P kill)
sh_bin=$(type -P sh)
# Wharf starts every job and process-driver instance through prlimit (util-linux), sandboxed or
# not; busybox has no prlimit.
prlimit_bin=$(type -P prlimit)
programs=("$binary" "$git_bin" "$kill_bin" "$sh_bin" "$prlimit_bin")

mkdir -p "$root/usr/local/bin" "$root/tmp" "$root/etc" "$root/data" "$root/bin" "$(dirname "$root$git_exec")"
chmod 1777 "$root/tmp"
cp "$binary" "$root/usr/local/bin/wharf"
cp "$git_bin" "$root$git_bin"
cp -a "$git_exec" "$root$git_exec"
cp "$kill_bin" "$root/bin/kill"
cp "$sh_bin" "$root/bin/sh"
mkdir -p "$root/usr/bin"
cp "$prlimit_bin" "$root/usr/bin/prlimit"
[ -e "$root/usr/share/git-core" ] || mkdir -p "$root/usr/share/git-core/templates"

# The jobs' userland: busybox, linked under each applet's usual path unless a real program is
# there already (git, sh and kill above stay as they are).
cp "$busybox_bin" "$root/bin/busybox"
"$busybox_bin" --list-full | while read -r applet; do
    [ -e "$root/$applet" ] && continue
    mkdir -p "$root/$(dirname "$applet")"
    ln -s /bin/busybox "$root/$applet"
done

# Every shared library of every program (git's helpers included), at the same path.
{
    for program in "${programs[@]}"; do ldd "$program" 2>/dev/null || true; done
    find "$git_exec" -type f -perm -u+x -exec ldd {} \; 2>/dev/null || true
} | grep -o '/[^ ]*' | sort -u | while read -r lib; do
    [ -e "$lib" ] || continue
    mkdir -p "$root$(dirname "$lib")"
    cp -L "$lib" "$root$lib"
done

echo 'root:x:0:0:root:/root:/bin/sh' > "$root/etc/passwd"
echo 'root:x:0:' > "$root/etc/group"
mkdir -p "$root/root"

tar -C "$root" -c . | docker import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV HOME=/root' \
    --change 'WORKDIR /data' \
    --change 'ENTRYPOINT ["/usr/local/bin/wharf"]' \
    - "$tag" > /dev/null
echo "built $tag ($(docker image inspect "$tag" --format '{{.Size}}' | awk '{printf "%.0f MB", $1/1e6}'))"
