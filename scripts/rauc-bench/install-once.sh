#!/usr/bin/env bash
# One `rauc install` through a fresh `rauc service`, inside dbus-run-session.
# Prints "wall_seconds service_peak_rss_kib".
set -euo pipefail
work=$1
export DBUS_STARTER_BUS_TYPE=session
rauc --conf="$work/system.conf" --override-boot-slot=A service >"$work/service.log" 2>&1 &
svc=$!
trap 'kill $svc 2>/dev/null || true' EXIT
for _ in $(seq 50); do
  rauc --conf="$work/system.conf" status >/dev/null 2>&1 && break
  sleep 0.1
done
start=$(date +%s.%N)
rauc --conf="$work/system.conf" install "$work/bundle.raucb" >"$work/install.log" 2>&1 || {
  cat "$work/install.log" "$work/service.log" >&2
  exit 1
}
end=$(date +%s.%N)
hwm=$(awk '/VmHWM/ {print $2}' "/proc/$svc/status")
awk -v s="$start" -v e="$end" -v h="$hwm" 'BEGIN { printf "%.2f %d\n", e - s, h }'
