#!/usr/bin/env bash
# Benchmark: `abupdate verify` against `openssl dgst -sha256` of the same bundle file, for a
# 100 MiB and a 1 GiB rootfs payload, in one run. Both read the file from the page cache
# (a warm-up read first), so the comparison is hashing plus reading, not disk speed.
# Prints a markdown table (throughput = bundle bytes / median wall time of 3 runs).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build -q --release -p abbuild -p abupdate
bin=target/release
work=$(mktemp -d -p "${BENCH_DIR:-/var/tmp}")
trap 'rm -rf "$work"' EXIT
"$bin/abbuild" -q keygen --out-dir "$work/keys" --name bench >/dev/null
head -c 8M /dev/urandom > "$work/kernel"
head -c 16M /dev/urandom > "$work/initrd"

median() { sort -n | sed -n 2p; }
# run LABEL CMD...: prints "median_seconds peak_rss_kib" over 3 runs.
run() {
  local times=() rss=0 out
  for _ in 1 2 3; do
    /usr/bin/time -o "$work/time" -f "%e %M" "$@" >/dev/null 2>&1
    out=$(tail -n1 "$work/time")
    times+=("${out% *}")
    ((${out#* } > rss)) && rss=${out#* }
  done
  printf '%s %s\n' "$(printf '%s\n' "${times[@]}" | median)" "$rss"
}

echo "| payload | tool | median time (s) | throughput (MB/s) | ratio to openssl | peak RSS (MiB) |"
echo "|---|---|---:|---:|---:|---:|"
for size in 100 1024; do
  head -c "${size}M" /dev/urandom > "$work/rootfs"
  "$bin/abbuild" -q bundle --rootfs "$work/rootfs" --kernel "$work/kernel" --initrd "$work/initrd" \
    --compatible bench --version 1 --key "$work/keys/bench.key" --out "$work/b.abu"
  rm "$work/rootfs"
  bytes=$(stat -c %s "$work/b.abu")
  cat "$work/b.abu" > /dev/null
  read -r ot orss < <(run openssl dgst -sha256 "$work/b.abu")
  read -r at arss < <(run "$bin/abupdate" --config /dev/null --keys "$work/keys" verify "$work/b.abu")
  # Fail loudly if verify does not actually succeed on this bundle.
  "$bin/abupdate" -q --config /dev/null --keys "$work/keys" verify "$work/b.abu" >/dev/null
  for row in "openssl dgst -sha256:$ot:$orss" "abupdate verify:$at:$arss"; do
    IFS=: read -r tool t rss <<<"$row"
    awk -v s="$size" -v tool="$tool" -v t="$t" -v b="$bytes" -v o="$ot" -v r="$rss" 'BEGIN {
      printf "| %d MiB | %s | %.2f | %.0f | %.2fx | %.1f |\n", s, tool, t, b / t / 1e6, o / t, r / 1024 }'
  done
done
