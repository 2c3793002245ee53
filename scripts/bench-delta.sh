#!/usr/bin/env bash
# Benchmark (partial, issue 12): delta updates between abbuild-made images of real files.
# Builds version 1 (disk image + bundle) and two later versions of a system made of real
# Debian files laid out as Nix store paths, then for each pair:
#   - `abupdate apply --dry-run --json` of the format 2 bundle onto the version 1 disk: bytes
#     read from the bundle (front + missing chunks) as a share of the bundle, requests;
#   - the apply itself from the bundle file (delta path) and the same system as a format 1
#     bundle (full stream), each onto a fresh copy of the disk: wall time, and the delta
#     apply's peak RSS (/usr/bin/time);
#   - a no-op (version 1's own root again).
# Not yet here (see docs/benchmarks.md): HTTP range fetching, casync and xdelta3 side by side.
# Usage: bash scripts/bench-delta.sh   (BENCH_DIR: work directory parent, default /var/tmp)
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$root/target}
cargo build -q --release -p abbuild -p abupdate
abbuild=$CARGO_TARGET_DIR/release/abbuild
abupdate=$CARGO_TARGET_DIR/release/abupdate
work=$(mktemp -d -p "${BENCH_DIR:-/var/tmp}")
trap 'rm -rf "$work"' EXIT

"$abbuild" -q keygen --out-dir "$work/keys" --name bench >/dev/null
mkdir -p "$work/trusted" && cp "$work/keys/bench.pub" "$work/trusted/"
printf 'compatible = "bench"\nkeys = "%s"\nstate-file = "%s/state.json"\n' "$work/trusted" "$work" >"$work/abupdate.toml"
: >"$work/cmdline"
export ABUPDATE_CMDLINE=$work/cmdline ABUPDATE_LOCK=$work/lock
cat >"$work/image.toml" <<'EOF'
name = "bench"
compatible = "bench"
disk-size = "320MiB"
esp-size = "40MiB"
slot-size = "128MiB"
compression = "zstd"
block-size = "128KiB"
boot-backend = "systemd-boot"
EOF

# Version 1: real files, one store path per source directory or library.
sys=$work/sys-1
mkdir -p "$sys/nix/store"
i=0
add() { # add SRC NAME: copy SRC as store path number i
  i=$((i + 1))
  local h
  h=$(printf '%032d' "$i" | tr 0-9 a-j)
  mkdir -p "$sys/nix/store/$h-$2"
  cp -a "$1" "$sys/nix/store/$h-$2/"
}
for d in /usr/lib/python3.11 /usr/share/perl /usr/lib/x86_64-linux-gnu/gconv /usr/share/zoneinfo \
  /usr/share/vim /usr/lib/git-core /usr/share/i18n /usr/share/locale/de /usr/share/locale/fr; do
  [ -d "$d" ] && add "$d" "$(basename "$d")"
done
for f in libcrypto.so.3 libssl.so.3 libstdc++.so.6 libzstd.so.1 libxml2.so.2 libsqlite3.so.0; do
  p=$(readlink -f "/usr/lib/x86_64-linux-gnu/$f")
  [ -f "$p" ] && add "$p" "$f"
done
cp "$(ls /boot/vmlinuz-* | head -n1)" "$sys/kernel" 2>/dev/null || head -c 8M /dev/urandom >"$sys/kernel"
head -c 4M /dev/urandom >"$sys/initrd"
ln -s /bin/sh "$sys/init"

# Version 2: a leaf library gets a new store path and new bytes (one package changed).
cp -a "$sys" "$work/sys-2"
(cd "$work/sys-2/nix/store" && d=$(ls | grep -- -libzstd) &&
  mv "$d" zzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzz-libzstd.so.1 &&
  python3 -c 'import sys
p = sys.argv[1]; b = bytearray(open(p, "rb").read())
for o in range(1000, len(b), 50000): b[o] ^= 0x55
open(p, "wb").write(b)' zzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzz-libzstd.so.1/*)
# Version 3: two packages of many small files renamed, one file changed.
cp -a "$sys" "$work/sys-3"
(cd "$work/sys-3/nix/store" && d=$(ls | grep -- -vim) && mv "$d" yyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyy-vim &&
  echo '" changed' >>"$(find yyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyy-vim -name '*.vim' | head -n1)" &&
  d=$(ls | grep -- -i18n) && mv "$d" xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx-i18n)

export SOURCE_DATE_EPOCH=1700000000
build() { # build N FORMAT
  "$abbuild" -q build --image "$work/image.toml" --system "$work/sys-$1" --version "$1" \
    --key "$work/keys/bench.key" --out-dir "$work/out-$1-f$2" --bundle-format "$2" >/dev/null
}
for v in 1 2 3; do build "$v" 2; done
for v in 2 3; do build "$v" 1; done
disk1=$work/out-1-f2/bench-1.img

echo "| pair | bundle (bytes) | read by a delta (bytes) | share | requests | delta apply (s) | peak RSS (MiB) | full apply, format 1 (s) |"
echo "|---|---:|---:|---:|---:|---:|---:|---:|"
for v in 1 2 3; do
  b=$work/out-$v-f2/bench-$v.abu
  extra=()
  [ "$v" = 1 ] && extra=(--allow-downgrade)
  cp --sparse=always "$disk1" "$work/d.img"
  json=$("$abupdate" -q --config "$work/abupdate.toml" --disk "$work/d.img" apply --dry-run --json "${extra[@]}" "$b")
  read -r total read requests < <(python3 -c 'import json,sys; p=json.load(sys.stdin); print(p["bundleBytes"], p["readBytes"], p["requests"])' <<<"$json")
  sync
  start=$(date +%s.%N)
  /usr/bin/time -f %M -o "$work/rss" "$abupdate" -q --config "$work/abupdate.toml" --disk "$work/d.img" apply "${extra[@]}" "$b" >/dev/null
  delta_s=$(echo "$(date +%s.%N) - $start" | bc)
  rss=$(echo "scale=1; $(cat "$work/rss") / 1024" | bc)
  full_s=-
  if [ "$v" != 1 ]; then
    cp --sparse=always "$disk1" "$work/d.img"
    sync
    start=$(date +%s.%N)
    "$abupdate" -q --config "$work/abupdate.toml" --disk "$work/d.img" apply "$work/out-$v-f1/bench-$v.abu" >/dev/null
    full_s=$(printf '%.2f' "$(echo "$(date +%s.%N) - $start" | bc)")
  fi
  name=$([ "$v" = 1 ] && echo "no-op (v1 again)" || echo "v1 -> v$v")
  printf '| %s | %d | %d | %.2f%% | %d | %.2f | %s | %s |\n' "$name" "$total" "$read" \
    "$(echo "$read * 100 / $total" | bc -l)" "$requests" "$delta_s" "$rss" "$full_s"
done
