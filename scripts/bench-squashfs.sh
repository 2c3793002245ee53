#!/usr/bin/env bash
# Benchmark: abbuild's root squashfs (`abbuild rootfs`, what `abbuild build` runs) against a
# plain `mksquashfs` of the same tree, same compressor and block size, all cores.
#
# The tree is a copy of the second-level entries of $BENCH_SRC (default /usr/share), in name
# order, until it holds about $BENCH_MB MB (default 300), plus the toplevel contract's files.
# The two builds alternate, so background load hits both alike; the best of $BENCH_RUNS counts.
# Prints a markdown table; with --append, also appends it to docs/benchmarks.md.
#
#   scripts/bench-squashfs.sh [--append]
#   BENCH_SRC=/usr/lib BENCH_MB=300 BENCH_RUNS=3 BENCH_IMAGE=images/qemu-test.toml scripts/bench-squashfs.sh
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
src=${BENCH_SRC:-/usr/share}
target_mb=${BENCH_MB:-300}
runs=${BENCH_RUNS:-3}
image=${BENCH_IMAGE:-$root/images/qemu-test.toml}
append=false
[ "${1:-}" = --append ] && append=true

comp=$(sed -n 's/^compression *= *"\(.*\)"/\1/p' "$image")
comp=${comp:-zstd}
block=$(sed -n 's/^block-size *= *"\(.*\)KiB"/\1/p' "$image")
block=${block:-128}

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

echo "building abbuild (release)..." >&2
(cd "$root" && cargo build --release -q -p abbuild)
abbuild=${CARGO_TARGET_DIR:-$root/target}/release/abbuild

echo "copying ~${target_mb} MB of $src..." >&2
tree=$work/tree
mkdir -p "$tree/content"
total_kb=0
while IFS= read -r rel; do
    [ "$total_kb" -ge $((target_mb * 1024)) ] && break
    (cd "$src" && cp -a --parents "$rel" "$tree/content/") 2>/dev/null || true
    total_kb=$((total_kb + $(du -sk "$src/$rel" | cut -f1)))
done < <(cd "$src" && find . -mindepth 2 -maxdepth 2 | LC_ALL=C sort)
total=$(du -sm "$tree" | cut -f1)
head -c 1000000 /dev/urandom >"$tree/kernel"
head -c 1000000 /dev/urandom >"$tree/initrd"
ln -s content/init "$tree/init"
files=$(find "$tree" | wc -l)
echo "tree: ${total} MB, ${files} entries" >&2

# Prints "wall cpu" seconds of one run (cpu = user + sys of the command and its children,
# which background load on a shared machine disturbs far less than wall time).
measure() {
    rm -f "$2"
    /usr/bin/time -f '%e %U %S' -o "$work/time" sh -c "$1" >/dev/null 2>&1
    [ -s "$2" ] || { echo "bench: '$1' made no output" >&2; exit 1; }
    awk '{print $1, $2 + $3}' "$work/time"
}
min() { echo "$1 $2" | awk '{print ($1<$2)?$1:$2}'; }

find "$tree" -type f -exec cat {} + >/dev/null 2>&1 || true
ours_cmd="SOURCE_DATE_EPOCH=0 '$abbuild' -q rootfs --image '$image' --system '$tree' --out '$work/ours.sqfs'"
plain_cmd="mksquashfs '$tree' '$work/plain.sqfs' -comp $comp -b ${block}K -noappend -quiet -no-progress"
ours_t=999999; ours_c=999999; plain_t=999999; plain_c=999999
for i in $(seq "$runs"); do
    echo "run $i/$runs..." >&2
    read -r w c < <(measure "$ours_cmd" "$work/ours.sqfs")
    ours_t=$(min "$ours_t" "$w"); ours_c=$(min "$ours_c" "$c")
    read -r w c < <(measure "$plain_cmd" "$work/plain.sqfs")
    plain_t=$(min "$plain_t" "$w"); plain_c=$(min "$plain_c" "$c")
done
load=$(cut -d' ' -f1 /proc/loadavg)
ours_s=$(stat -c %s "$work/ours.sqfs")
plain_s=$(stat -c %s "$work/plain.sqfs")

table=$(awk -v ot="$ours_t" -v pt="$plain_t" -v oc="$ours_c" -v pc="$plain_c" -v os="$ours_s" -v ps="$plain_s" \
    -v mb="$total" -v n="$files" -v comp="$comp" -v block="$block" -v cores="$(nproc)" -v runs="$runs" \
    -v load="$load" -v src="$src" -v ver="$(mksquashfs -version | head -1 | cut -d' ' -f3)" 'BEGIN {
    printf "Tree: %d MB, %d entries (from %s); %s, %d KiB blocks, %d cores, mksquashfs %s; ", mb, n, src, comp, block, cores, ver
    printf "best of %d alternating runs; load average %s at the end.\n\n", runs, load
    print "| build | wall time (s) | CPU time (s) | image size (bytes) | vs plain mksquashfs |"
    print "|---|---|---|---|---|"
    printf "| plain `mksquashfs` | %.2f | %.2f | %d | 1.00x wall, 1.00x CPU, 100.0%% size |\n", pt, pc, ps
    printf "| `abbuild rootfs` | %.2f | %.2f | %d | %.2fx wall, %.2fx CPU, %.1f%% size |\n", ot, oc, os, ot/pt, oc/pc, 100*os/ps
}')
echo "$table"

if $append; then
    f=$root/docs/benchmarks.md
    [ -f "$f" ] || printf '# Benchmarks\n' >"$f"
    grep -q '^## Squashfs build (abbuild)' "$f" || printf '\n## Squashfs build (abbuild)\n\nMade by `scripts/bench-squashfs.sh`.\n' >>"$f"
    printf '\n%s\n' "$table" >>"$f"
fi
