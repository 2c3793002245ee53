#!/usr/bin/env bash
# Benchmark: `abupdate apply` of a bundle with a ~1 GiB (and a 100 MiB) root image, onto a disk
# image file and onto a loop device, side by side in one run with
#   - dd bs=4M oflag=direct conv=fsync of the same payload onto the same slot,
#   - openssl dgst -sha256 of the payload,
#   - the same dd followed by an O_DIRECT read of the slot (the I/O an apply cannot avoid:
#     read the payload, write it, read it back), as a floor,
#   - RAUC 1.8 installing a plain bundle with the same image into a raw slot on the loop device
#     (`rauc service` under dbus-run-session, bootloader=custom; set-up in scripts/rauc-bench/).
# Every tool runs once per round, rounds interleaved, so a slow spell of the (shared, virtual)
# machine hits all tools alike; the page cache is dropped before each run.
# Prints a markdown table and the goal ratios. Needs root (losetup), mtools, gdisk, dosfstools,
# rauc, dbus. RAUC is a peer the goals are measured against: when it is missing the script
# installs Debian's package, and stops with an error if that fails (never a table without it).
# Usage: sudo bash scripts/bench-apply.sh [SIZES_MIB...]   (default: 100 1024)
#        BENCH_ROUNDS=N (default 5) sets the number of rounds.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
sizes=("${@:-100 1024}")
read -r -a sizes <<<"${sizes[*]}"
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$root/target}
# The peer first, before minutes of building: a run without RAUC would hide the 2x goal.
need_peer() {
  if ! command -v rauc >/dev/null || ! command -v dbus-run-session >/dev/null; then
    echo "bench-apply: rauc or dbus-run-session missing: apt-get install rauc dbus" >&2
    DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2 &&
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq rauc dbus >&2 || true
  fi
  if ! command -v rauc >/dev/null || ! command -v dbus-run-session >/dev/null; then
    echo "bench-apply: error: RAUC (Debian package rauc, with dbus) is needed as the peer of this benchmark and could not be installed; install it and run again" >&2
    exit 1
  fi
  echo "bench-apply: peer $(rauc --version 2>/dev/null | head -n1)" >&2
}
need_peer
# The binary that ships: static musl (size.sh builds it and prints its stripped size).
bash scripts/size.sh || echo "bench-apply: abupdate is over its size goal (docs/benchmarks.md)"
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

rounds=${BENCH_ROUNDS:-5}
# median of the numbers on stdin
median() { sort -n | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
# timed CMD...: drops the page cache, runs CMD; prints "seconds peak_rss_kib".
timed() {
  sync
  echo 3 >/proc/sys/vm/drop_caches 2>/dev/null || true
  /usr/bin/time -o "$work/time" -f "%e %M" "$@" >"$work/out" 2>&1 || { cat "$work/out" >&2; return 1; }
  tail -n1 "$work/time"
}

# The tools, each one run: prints "seconds peak_rss_kib". $size, $bytes, $off, $loop, $slot_b
# are set per payload size below.
fresh_file() { cp --sparse=always "$work/base.img" "$work/disk.img"; }
fresh_loop() { dd if="$work/base.img" of="$loop" bs=1M count=258 conv=fsync status=none; }
# --full: the bundle is format 2 (abbuild's default), whose apply is otherwise a delta with a
# seed scan; this benchmark measures the stream path.
apply() { timed "$abupdate" -q --config "$work/abupdate.toml" --disk "$1" apply --full "$work/b.abu"; }
t_apply_file() { fresh_file && apply "$work/disk.img"; }
t_apply_loop() { fresh_loop && apply "$loop"; }
t_dd_file() { fresh_file && timed dd if="$work/rootfs" of="$work/disk.img" bs=4M oflag=direct,seek_bytes seek="$off" conv=fsync,notrunc status=none; }
t_dd_loop() { timed dd if="$work/rootfs" of="$slot_b" bs=4M oflag=direct conv=fsync status=none; }
t_floor_file() {
  fresh_file && timed bash -c "dd if='$work/rootfs' of='$work/disk.img' bs=4M oflag=direct,seek_bytes seek=$off conv=fsync,notrunc status=none &&
    dd if='$work/disk.img' of=/dev/null bs=4M iflag=direct,skip_bytes,count_bytes skip=$off count=$bytes status=none"
}
t_floor_loop() {
  timed bash -c "dd if='$work/rootfs' of='$slot_b' bs=4M oflag=direct conv=fsync status=none &&
    dd if='$slot_b' of=/dev/null bs=4M iflag=direct,count_bytes count=$bytes status=none"
}
t_openssl() { timed openssl dgst -sha256 "$work/rootfs"; }
t_rauc() {
  sync
  echo 3 >/proc/sys/vm/drop_caches 2>/dev/null || true
  bash scripts/rauc-bench/run.sh once "$work"
}
tools=(apply_file apply_loop dd_file dd_loop floor_file floor_loop openssl)
declare -A label=(
  [apply_file]="abupdate apply|image file" [apply_loop]="abupdate apply|loop device"
  [dd_file]="dd bs=4M oflag=direct conv=fsync|image file" [dd_loop]="dd bs=4M oflag=direct conv=fsync|loop device"
  [floor_file]="the same dd, then an O_DIRECT read of the slot|image file"
  [floor_loop]="the same dd, then an O_DIRECT read of the slot|loop device"
  [openssl]="openssl dgst -sha256|(payload file)" [rauc]="rauc install (plain bundle, service)|loop device"
)

table=()
goals=()
for size in "${sizes[@]}"; do
  slot=$((size + size / 16 + 16))
  head -c "${size}M" /dev/urandom >"$work/rootfs"
  bytes=$((size * 1024 * 1024))
  "$abbuild" -q bundle --rootfs "$work/rootfs" --kernel "$work/kernel" --initrd "$work/initrd" \
    --compatible bench --version 2 --key "$work/keys/bench.key" --out "$work/b.abu"
  make_disk "$work/base.img" "$slot"
  off=$(part_offset "$work/base.img" 3)
  cp --sparse=always "$work/base.img" "$work/loop.img"
  loop=$(losetup -f --show "$work/loop.img")
  loops+=("$loop")
  slot_a=$(part_loop "$work/loop.img" 2)
  slot_b=$(part_loop "$work/loop.img" 3)
  run_tools=("${tools[@]}" rauc)
  bash scripts/rauc-bench/run.sh prepare "$work" "$work/rootfs" "$slot_a" "$slot_b" || {
    echo "bench-apply: error: preparing the RAUC bundle failed" >&2
    exit 1
  }

  declare -A times=() rss=()
  for round in $(seq "$rounds"); do
    echo "${size} MiB: round $round of $rounds" >&2
    for t in "${run_tools[@]}"; do
      out=$("t_$t") || { echo "$t failed" >&2; exit 1; }
      read -r s r <<<"$out"
      times[$t]+="$s "
      ((r > ${rss[$t]:-0})) && rss[$t]=$r
    done
  done

  declare -A med=()
  for t in "${run_tools[@]}"; do
    med[$t]=$(printf '%s\n' ${times[$t]} | median)
    range=$(printf '%s\n' ${times[$t]} | sort -n | sed -n '1p;$p' | paste -sd-)
    table+=("$(awk -v s="$size" -v l="${label[$t]}" -v t="${med[$t]}" -v g="$range" -v r="${rss[$t]}" -v b="$bytes" 'BEGIN {
      split(l, p, "|"); printf "| %d MiB | %s | %s | %.2f | %s | %.0f | %.1f |", s, p[1], p[2], t, g, b / t / 1e6, r / 1024 }')")
  done
  # Throughput ratios (a time ratio inverted): above 1 means abupdate is faster.
  ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2fx", b / a }'; }
  slower() { awk -v a="$1" -v b="$2" 'BEGIN { print (a > b) ? a : b }'; }
  for tgt in file loop; do
    a=${med[apply_$tgt]}
    line="- ${size} MiB, ${label[apply_$tgt]#*|}: $(ratio "$a" "$(slower "${med[dd_$tgt]}" "${med[openssl]}")") of the slower of dd and openssl (goal 0.7x)"
    line+=", $(ratio "$a" "${med[floor_$tgt]}") of the write + read-back floor"
    [[ $tgt == loop ]] && line+=", $(ratio "$a" "${med[rauc]}") of RAUC (goal 2x)"
    goals+=("$line")
  done
  unset times rss med

  for l in "$slot_a" "$slot_b" "$loop"; do losetup -d "$l"; done
  loops=()
  rm -f "$work/rootfs" "$work/b.abu" "$work/disk.img" "$work/loop.img"
done

echo "| payload | tool | target | median time (s) | range (s) | throughput (MB/s) | peak RSS (MiB) |"
echo "|---|---|---|---:|---|---:|---:|"
printf '%s\n' "${table[@]}"
echo
printf '%s\n' "${goals[@]}"
