#!/usr/bin/env bash
# RAUC side of scripts/bench-apply.sh.
#   run.sh prepare WORKDIR ROOTFS SLOT_A_DEV SLOT_B_DEV
#       builds a plain RAUC bundle holding ROOTFS as the image of a raw slot, and a system.conf
#       with two raw slots (both block devices; slot A is "booted").
#   run.sh once WORKDIR
#       installs that bundle once into slot B through `rauc service` on a private D-Bus session
#       bus; prints "seconds peak_rss_kib", where the time is the `rauc install` client's wall
#       time (it returns when the service is done) and the RSS is the service's peak (VmHWM),
#       since the service does the work.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
work=$2/rauc
case $1 in
prepare)
  rootfs=$3 slot_a=$4 slot_b=$5
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
  ;;
once)
  DBUS_STARTER_BUS_TYPE=session dbus-run-session -- bash "$here/install-once.sh" "$work"
  ;;
*)
  echo "usage: run.sh prepare WORKDIR ROOTFS SLOT_A_DEV SLOT_B_DEV | run.sh once WORKDIR" >&2
  exit 2
  ;;
esac
