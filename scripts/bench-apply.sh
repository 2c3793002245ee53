#!/usr/bin/env bash
# Benchmark: `abupdate apply` of a bundle with a ~1 GiB (and a 100 MiB) root image, onto a disk
# image file and onto a loop device, side by side in one run with
#   - dd bs=4M oflag=direct conv=fsync of the same payload onto the same slot,
#   - openssl dgst -sha256 of the payload,
#   - RAUC 1.8 installing a plain bundle with the same image into a raw slot on the loop device
#     (`rauc service` under dbus-run-session, bootloader=custom; set-up in scripts/rauc-bench/).
# Prints a markdown table. Needs root (losetup), mtools, gdisk, dosfstools, rauc, dbus.
# Usage: sudo bash scripts/bench-apply.sh [SIZES_MIB...]   (default: 100 1024)
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
sizes=("${@:-100 1024}")
read -r -a sizes <<<"${sizes[*]}"
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$root/target}
# The binary that ships: static musl.
cargo build -q --release --target x86_64-unknown-linux-musl -p abupdate
cargo build -q --release -p abbuild
abupdate=$CARGO_TARGET_DIR/x86_64-unknown-linux-musl/release/abupdate
abbuild=$CARGO_TARGET_DIR/release/abbuild
work=$(mktemp -d -p "${BENCH_DIR:-/var/tmp}")
loops=()
cleanup() {
  for l in "${loops[@]}"; do losetup -d "$l" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

"$abbuild" -q keygen --out-dir "$work/keys" --name bench >/dev/null
rm -f "$work/keys/bench.key.pub"
mkdir -p "$work/trusted" && cp "$work/keys/bench.pub" "$work/trusted/"
head -c 8M /dev/urandom >"$work/kernel"
head -c 16M /dev/urandom >"$work/initrd"
printf 'compatible = "bench"\nkeys = "%s"\nstate-file = "%s/state.json"\n' "$work/trusted" "$work" >"$work/abupdate.toml"
: >"$work/cmdline" # no ab.slot=: the disk is not the booted one
export ABUPDATE_CMDLINE=$work/cmdline ABUPDATE_LOCK=$work/lock

# make_disk PATH SLOT_MIB: a GPT disk following docs/layout.md, slot a holding version 1
# (8 MiB kernel, 16 MiB initrd: the bundle's are the same size).
make_disk() {
  local img=$1 slot=$2
  rm -f "$img"
  truncate -s $((1 + 256 + 2 * slot + 8 + 1))M "$img"
  # (sgdisk -q writes nothing: keep it verbose and silence it)
  sgdisk -n1:1M:+256M -c1:esp -t1:EF00 -n2:0:+"${slot}"M -c2:root-a -t2:8304 \
    -n3:0:+"${slot}"M -c3:root-b -t3:8304 -n4:0:0 -c4:data -t4:8300 "$img" >/dev/null
  local esp=$work/esp.fat
  # As abbuild makes it for images/vps.toml: 256 MiB of FAT32 with 2 KiB clusters.
  rm -f "$esp" && truncate -s 256M "$esp"
  mkfs.vfat -F 32 -s 4 -S 512 -n ESP "$esp" >/dev/null
  mmd -i "$esp" ::/loader ::/loader/entries ::/a ::/b
  printf 'timeout 0\n' | mcopy -i "$esp" - ::/loader/loader.conf
  mcopy -i "$esp" "$work/kernel" ::/a/vmlinuz
  mcopy -i "$esp" "$work/initrd" ::/a/initrd
  printf 'title abupdate slot a, 1\nsort-key abupdate\nversion 1\nlinux /a/vmlinuz\ninitrd /a/initrd\noptions ab.slot=a root=PARTLABEL=root-a\n' |
    mcopy -i "$esp" - ::/loader/entries/slot-a.conf
  dd if="$esp" of="$img" bs=1M seek=1 conv=notrunc status=none
}
# part_offset IMG N / part_size IMG N: partition N's byte offset and size (from sgdisk).
part_offset() { sgdisk -i "$2" "$1" | awk '/First sector/ {print $3 * 512}'; }
part_size() { sgdisk -i "$2" "$1" | awk '/Partition size/ {print $3 * 512}'; }
# Partition block devices of a loop device, made as loop devices of their own: containers
# often have no udev to create /dev/loopNpM nodes (a write there would land in a plain file).
part_loop() {
  local l
  l=$(losetup -f --show -o "$(part_offset "$1" "$2")" --sizelimit "$(part_size "$1" "$2")" "$1")
  loops+=("$l")
  echo "$l"
}

median() { sort -n | sed -n 2p; }
# run PREP_FN CMD...: runs PREP_FN (untimed) then CMD, 3 times; prints "median_s peak_rss_kib".
run() {
  local prep=$1 times=() rss=0 out
  shift
  for _ in 1 2 3; do
    $prep
    sync
    echo 3 >/proc/sys/vm/drop_caches 2>/dev/null || true
    /usr/bin/time -o "$work/time" -f "%e %M" "$@" >"$work/out" 2>&1 || { cat "$work/out" >&2; return 1; }
    out=$(tail -n1 "$work/time")
    times+=("${out% *}")
    ((${out#* } > rss)) && rss=${out#* }
  done
  printf '%s %s\n' "$(printf '%s\n' "${times[@]}" | median)" "$rss"
}

rows=()
row() { # SIZE TOOL TARGET SECONDS RSS_KIB BYTES
  rows+=("$(awk -v s="$1" -v tool="$2" -v tgt="$3" -v t="$4" -v r="$5" -v b="$6" 'BEGIN {
    printf "| %d MiB | %s | %s | %.2f | %.0f | %.1f |", s, tool, tgt, t, b / t / 1e6, r / 1024 }')")
}

for size in "${sizes[@]}"; do
  slot=$((size + size / 16 + 16))
  head -c "${size}M" /dev/urandom >"$work/rootfs"
  bytes=$((size * 1024 * 1024))
  "$abbuild" -q bundle --rootfs "$work/rootfs" --kernel "$work/kernel" --initrd "$work/initrd" \
    --compatible bench --version 2 --key "$work/keys/bench.key" --out "$work/b.abu"
  make_disk "$work/base.img" "$slot"

  # abupdate onto an image file.
  fresh_file() { cp --sparse=always "$work/base.img" "$work/disk.img"; }
  read -r t r < <(run fresh_file "$abupdate" -q --config "$work/abupdate.toml" --disk "$work/disk.img" apply "$work/b.abu")
  row "$size" "abupdate apply" "image file" "$t" "$r" "$bytes"

  # abupdate onto a loop device.
  cp --sparse=always "$work/base.img" "$work/loop.img"
  loop=$(losetup -f --show "$work/loop.img")
  loops+=("$loop")
  slot_a=$(part_loop "$work/loop.img" 2)
  slot_b=$(part_loop "$work/loop.img" 3)
  loops+=("$slot_a" "$slot_b")
  fresh_loop() { dd if="$work/base.img" of="$loop" bs=1M count=258 conv=fsync status=none; }
  read -r t r < <(run fresh_loop "$abupdate" -q --config "$work/abupdate.toml" --disk "$loop" apply "$work/b.abu")
  row "$size" "abupdate apply" "loop device" "$t" "$r" "$bytes"

  # dd of the payload onto slot b, both targets.
  off=$(part_offset "$work/base.img" 3)
  nothing() { :; }
  read -r t r < <(run fresh_file dd if="$work/rootfs" of="$work/disk.img" bs=4M oflag=direct,seek_bytes seek="$off" conv=fsync,notrunc status=none)
  row "$size" "dd bs=4M oflag=direct conv=fsync" "image file" "$t" "$r" "$bytes"
  read -r t r < <(run nothing dd if="$work/rootfs" of="$slot_b" bs=4M oflag=direct conv=fsync status=none)
  row "$size" "dd bs=4M oflag=direct conv=fsync" "loop device" "$t" "$r" "$bytes"

  read -r t r < <(run nothing openssl dgst -sha256 "$work/rootfs")
  row "$size" "openssl dgst -sha256" "(payload file)" "$t" "$r" "$bytes"

  # RAUC: plain bundle, raw slot on the same loop device.
  if command -v rauc >/dev/null; then
    if out=$(bash scripts/rauc-bench/run.sh "$work" "$work/rootfs" "$slot_a" "$slot_b" 2>"$work/rauc.err"); then
      read -r t r <<<"$out"
      row "$size" "rauc install (plain bundle, service)" "loop device" "$t" "$r" "$bytes"
    else
      echo "rauc failed:" >&2
      cat "$work/rauc.err" >&2
    fi
  fi
  for l in "$slot_a" "$slot_b" "$loop"; do losetup -d "$l"; done
  loops=()
  rm -f "$work/rootfs" "$work/b.abu" "$work/disk.img" "$work/loop.img"
done

echo "| payload | tool | target | median time (s) | throughput (MB/s) | peak RSS (MiB) |"
echo "|---|---|---|---:|---:|---:|"
printf '%s\n' "${rows[@]}"
