#!/bin/sh
# nix/system/watchdog-feeder.sh feeds the watchdog only while PID 1 reaps orphans: run in a PID
# namespace whose PID 1 is a shell that reaps (it must feed every round) and one whose PID 1
# never reaps (after its first feed at start it must stop). The "device" is a plain file that
# counts the feeds. Needs root (a PID namespace); exit 77 without it.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
bb=$(command -v busybox)
unshare -fp --mount-proc true 2>/dev/null || { echo "skipping: cannot make a PID namespace"; exit 77; }
printf 'AB_WATCHDOG=%s/dev\nAB_WATCHDOG_TIMEOUT=4\n' "$tmp" > "$tmp/env"
{
    echo "PATH=$(dirname "$bb"):/usr/bin:/bin"
    sed "s#/run/abinit/env#$tmp/env#" "$here/../system/watchdog-feeder.sh"
} > "$tmp/feeder.sh"

feeds() { # PID 1's code -> number of feeds in 6 s
    : > "$tmp/dev"
    # The feeder starts 1 s late, so that PID 1 is already running $1.
    timeout -s KILL 7 unshare -fp --kill-child --mount-proc "$bb" sh -c "($bb sleep 1; exec $bb sh $tmp/feeder.sh) & $1" \
        >"$tmp/log" 2>&1 || true
    wc -c < "$tmp/dev"
}
reaping=$(feeds 'while :; do sleep 1; done')
wedged=$(feeds "exec $bb sleep 100")
echo "feeds in 6 s: $reaping while PID 1 reaps, $wedged while it does not"
cat "$tmp/log"
[ "$reaping" -ge 3 ] || { echo "FAIL: the feeder starved a working init"; exit 1; }
[ "$wedged" -le 1 ] || { echo "FAIL: the feeder fed a wedged init"; exit 1; }
grep -q "has not reaped" "$tmp/log" || { echo "FAIL: no word about the wedged init"; exit 1; }
echo PASS
