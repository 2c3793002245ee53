#!/usr/bin/env bash
# Builds the fixture images and bundles, then runs every QEMU scenario (or those named).
# Serial logs: out/qemu/logs. Timings are appended to out/qemu/timings.md.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
bash "$repo/qemu-tests/build-fixtures.sh" "$repo/out/qemu"
export ABTEST_KERNEL
ABTEST_KERNEL=$(readlink -f "$repo/out/qemu/system-1")/kernel
rm -f "$repo/out/qemu/timings.md"
python3 "$repo/qemu-tests/run.py" --artifacts "$repo/out/qemu" --timings "$repo/out/qemu/timings.md" "$@"
