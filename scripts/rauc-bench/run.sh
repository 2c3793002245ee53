#!/usr/bin/env bash
# RAUC side of scripts/bench-apply.sh: builds a plain RAUC bundle holding ROOTFS as the image of
# a raw slot, then installs it 3 times through `rauc service` (on a private D-Bus session bus)
# into the raw slot B (slot A is "booted"), both block devices.
# Usage: run.sh WORKDIR ROOTFS SLOT_A_DEV SLOT_B_DEV  -> prints "median_seconds peak_rss_kib" on stdout,
# where the time is the `rauc install` client's wall time (it returns when the service is done)
# and the RSS is the service's peak (VmHWM), since the service does the work.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
work=$1/rauc
rootfs=$2
slot_a=$3
slot_b=$4
mkdir -p "$work"
if [[ ! -f $work/ca.key ]]; then
  openssl req -x509 -newkey rsa:2048 -nodes -keyout "$work/ca.key" -out "$work/ca.pem" \
    -days 365 -subj "/CN=abupdate-bench-test-only" 2>/dev/null
fi
rm -rf "$work/bundle-in" "$work/bundle.raucb" "$work/data" "$work/mnt"
mkdir -p "$work/bundle-in" "$work/data" "$work/mnt"
ln "$rootfs" "$work/bundle-in/rootfs.img" 2>/dev/null || cp "$rootfs" "$work/bundle-in/rootfs.img"
cat >"$work/bundle-in/manifest.raucm" <<EOM
[update]
compatible=abupdate-bench
version=2

[bundle]
format=plain

[image.rootfs]
filename=rootfs.img
EOM
rauc bundle --cert="$work/ca.pem" --key="$work/ca.key" "$work/bundle-in" "$work/bundle.raucb" >/dev/null
rm -f "$work/bundle-in/rootfs.img"
sed -e "s|@WORK@|$work|g" -e "s|@SLOT_A@|$slot_a|g" -e "s|@SLOT_B@|$slot_b|g" -e "s|@HERE@|$here|g" \
  "$here/system.conf.in" >"$work/system.conf"

times=()
rss=0
for _ in 1 2 3; do
  sync
  echo 3 >/proc/sys/vm/drop_caches 2>/dev/null || true
  out=$(DBUS_STARTER_BUS_TYPE=session dbus-run-session -- bash "$here/install-once.sh" "$work")
  times+=("${out% *}")
  ((${out#* } > rss)) && rss=${out#* }
done
printf '%s %s\n' "$(printf '%s\n' "${times[@]}" | sort -n | sed -n 2p)" "$rss"
