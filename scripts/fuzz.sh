#!/usr/bin/env bash
# Runs the bundle reader's fuzz target for a bounded time (default 60 s), seeded with a
# small valid bundle signed by the fuzz target's test-only key, so mutations reach the
# chunk-verification paths and not only the header checks.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-60}
corpus=fuzz/corpus/bundle_reader
mkdir -p "$corpus"
seed=$(mktemp -d)
trap 'rm -rf "$seed"' EXIT
# The fuzz target trusts the key with seed 0x11..11 (test-only).
printf 'abupdate-secret-key-v1 %s\n' "$(printf '11%.0s' {1..32})" > "$seed/fuzz.key"
head -c 20000 /dev/zero | tr '\0' 'r' > "$seed/rootfs"
head -c 5000 /dev/zero | tr '\0' 'k' > "$seed/kernel"
head -c 3000 /dev/zero | tr '\0' 'i' > "$seed/initrd"
cargo run -q -p abbuild -- -q bundle --rootfs "$seed/rootfs" --kernel "$seed/kernel" \
  --initrd "$seed/initrd" --compatible fuzz --version 1 --key "$seed/fuzz.key" \
  --chunk-size 4096 --out "$corpus/seed.abu"
cd fuzz
cargo +nightly fuzz run bundle_reader corpus/bundle_reader -- \
  -max_total_time="$seconds" -rss_limit_mb=1024 -max_len=65536 -print_final_stats=1 2>&1 | tail -n 15
echo "fuzz: ${seconds}s without a crash"

# The channel file reader (docs/channels.md), seeded with a signed channel file, for a quarter
# of the time: it is a few hundred lines of JSON handling, not the bundle reader's streaming.
cd ..
ccorpus=fuzz/corpus/channel
mkdir -p "$ccorpus"
cargo run -q -p abbuild -- -q publish --bundle "$corpus/seed.abu" --channel stable \
  --key "$seed/fuzz.key" --out-dir "$seed/www"
cp "$seed/www/fuzz/stable.json" "$ccorpus/seed.json"
cd fuzz
cseconds=$(( seconds / 4 > 5 ? seconds / 4 : 5 ))
cargo +nightly fuzz run channel corpus/channel -- \
  -max_total_time="$cseconds" -rss_limit_mb=1024 -max_len=70000 -print_final_stats=1 2>&1 | tail -n 15
echo "fuzz: channel reader ${cseconds}s without a crash"
