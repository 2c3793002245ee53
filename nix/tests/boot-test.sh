#!/bin/sh
# Boots a toplevel the quick way (QEMU -kernel/-initrd, TCG) from a GPT disk made here by hand
# (sgdisk; a squashfs of the closure in root-a, laid out as docs/layout.md says; empty data), and
# waits for the console lines that show the initrd and the system did their work.
#
#   nix/tests/boot-test.sh fixture   # scripts/build-fixture.sh, expects "ABTEST READY slot=a version=..."
#   nix/tests/boot-test.sh mock      # mkSystem (examples/vps.nix + tests/vps-test.nix) built against
#                                    # tests/mock-nixpkgs, with user networking: expects the
#                                    # DHCP lease, the health check and mark-good
#   nix/tests/boot-test.sh webserver # mkSystem's web server example (mock nixpkgs) with an i6300esb:
#                                    # the watchdog armed and fed past its 10 s, the server
#                                    # answering the health check's request, mark-good
#
# Needs (Debian): nix-bin busybox-static linux-image-amd64 qemu-system-x86 squashfs-tools gdisk,
# a Rust toolchain with the x86_64-unknown-linux-musl target, root. Work files in $TMPDIR.
set -eu
mode=${1:-fixture}
repo=$(cd "$(dirname "$0")/../.." && pwd)
work=$(mktemp -d "${TMPDIR:-/tmp}/abinit-boot-test.XXXXXX")
qemu_pid=
cleanup() {
    [ -z "$qemu_pid" ] || kill "$qemu_pid" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT INT TERM

fail() {
    echo "boot-test: FAIL: $*" >&2
    [ ! -f "$work/console.log" ] || tail -n 40 "$work/console.log" >&2
    exit 1
}

# The static abupdate: scripts/build-fixture.sh builds it for the fixture; the mock needs its path.
target=x86_64-unknown-linux-musl
abupdate=${CARGO_TARGET_DIR:-$repo/target}/$target/release/abupdate
case "$abupdate" in /*) ;; *) abupdate=$repo/$abupdate ;; esac

case "$mode" in
    fixture)
        toplevel=$("$repo/scripts/build-fixture.sh" --version 42 --no-out-link)
        expect="abinit: switching to slot a
ABTEST READY slot=a version=42"
        net=
        ;;
    mock)
        (cd "$repo" && cargo build --quiet --release --target "$target" -p abupdate)
        toplevel=$(nix-build --option sandbox false --option substituters "" --no-out-link \
            "$repo/nix/tests/mock-system.nix" -A bootable.toplevel --argstr abupdate "$abupdate")
        expect="abinit: switching to slot a
boot: vps 7 on slot a
lease of 10.0.2.15 obtained
ABTEST HEALTH-CHECK running
health: healthy; abupdate mark-good exited
ABTEST SERVICES-UP
nameserver 9.9.9.9
default via 10.0.2.2"
        net="-nic user,model=virtio-net-pci"
        ;;
    webserver)
        (cd "$repo" && cargo build --quiet --release --target "$target" -p abupdate)
        toplevel=$(nix-build --option sandbox false --option substituters "" --no-out-link \
            "$repo/nix/tests/mock-system.nix" -A bootableWebserver.toplevel --argstr abupdate "$abupdate")
        # With -no-reboot a watchdog reset stops QEMU: SERVICES-UP (15 s after the services
        # start) comes only if the feeder kept the 10 s watchdog fed.
        expect="abinit: hardware watchdog armed
abinit: switching to slot a
watchdog-feeder: feeding /dev/watchdog
ABTEST WEB-HEALTHY
health: healthy; abupdate mark-good exited
ABTEST SERVICES-UP"
        net="-nic user,model=virtio-net-pci -device i6300esb"
        ;;
    *) echo "usage: $0 fixture|mock|webserver" >&2; exit 2 ;;
esac
echo "boot-test: toplevel $toplevel" >&2

# The root filesystem, as abbuild lays it out for a store path.
root=$work/root
mkdir -p "$root/nix/store"
for p in $(nix-store -qR "$toplevel"); do cp -a "$p" "$root/nix/store/"; done
ln -s "$toplevel/init" "$root/init"
ln -s "$toplevel/etc" "$root/etc"
ln -s "$toplevel" "$root/system"
for d in dev proc sys run tmp data var; do mkdir -p "$root/$d"; done
mksquashfs "$root" "$work/root.sqfs" -comp zstd -all-root -quiet -no-progress >/dev/null

size=$(( ($(stat -c %s "$work/root.sqfs") >> 20) + 8 ))
disk=$work/disk.img
truncate -s $((size * 2 + 120))M "$disk"
sgdisk -n1:1M:+16M -t1:C12A7328-F81F-11D2-BA4B-00A0C93EC93B -c1:esp \
    -n2:0:+${size}M -t2:4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709 -c2:root-a \
    -n3:0:+${size}M -t3:4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709 -c3:root-b \
    -n4:0:0 -t4:0FC63DAF-8483-4772-8E79-3D69D8477DE4 -c4:data "$disk" >/dev/null
start=$(sgdisk -i2 "$disk" | awk '/First sector/ { print $3 }')
dd if="$work/root.sqfs" of="$disk" bs=512 seek="$start" conv=notrunc status=none

: > "$work/console.log"
# shellcheck disable=SC2086 # $net is two words or none
timeout 300 qemu-system-x86_64 -accel tcg -m 512 -nographic -no-reboot \
    -kernel "$toplevel/kernel" -initrd "$toplevel/initrd" \
    -append "$(cat "$toplevel/kernel-params") ab.slot=a root=PARTLABEL=root-a" \
    -drive "file=$disk,if=virtio,format=raw" $net \
    < /dev/null > "$work/console.log" 2>&1 &
qemu_pid=$!

waited=0
while IFS= read -r line; do
    until grep -qF "$line" "$work/console.log"; do
        if grep -q "Kernel panic" "$work/console.log" || ! kill -0 "$qemu_pid" 2>/dev/null; then
            fail "the machine stopped before: $line"
        fi
        [ "$waited" -lt 240 ] || fail "not seen within 240 s: $line"
        sleep 1
        waited=$((waited + 1))
    done
    echo "boot-test: seen: $line" >&2
done <<EOF
$expect
EOF
echo "boot-test: $mode: PASS" >&2
