#!/usr/bin/env bash
# Size of the abupdate that ships: the static musl release build with https, stripped.
# The goal is at most 4 MiB (docs/benchmarks.md, "abupdate binary size"). Prints one line;
# exits 1 if the goal is missed. Called by scripts/bench-apply.sh.
# Usage: bash scripts/size.sh
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$PWD/target}
cargo build -q --release --target x86_64-unknown-linux-musl -p abupdate
bin=$CARGO_TARGET_DIR/x86_64-unknown-linux-musl/release/abupdate
stripped=$(mktemp)
trap 'rm -f "$stripped"' EXIT
strip -o "$stripped" "$bin"
size=$(stat -c %s "$stripped")
limit=$((4 * 1024 * 1024))
printf 'abupdate binary (static musl, https, stripped): %d bytes (%.2f MiB), goal <= %d\n' \
  "$size" "$(awk -v s="$size" 'BEGIN { print s / 1048576 }')" "$limit"
[ "$size" -le "$limit" ]
