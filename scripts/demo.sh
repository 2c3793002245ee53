#!/usr/bin/env bash
# The main job: build the fixture system v1 and v2 with Nix, turn them into a disk image and
# signed bundles with abbuild, boot v1 under QEMU, apply v2, reboot, and show the slot status
# before and after. Takes a few minutes on 2 cores (QEMU without KVM).
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
bash "$repo/scripts/setup.sh"
bash "$repo/qemu-tests/build-fixtures.sh" "$repo/out/qemu"
export ABTEST_KERNEL
ABTEST_KERNEL=$(readlink -f "$repo/out/qemu/system-1")/kernel
python3 "$repo/qemu-tests/demo.py" "$repo/out/qemu"
