#!/usr/bin/env bash
# The test command: installs what is missing, then runs lints, all tests, the fuzzer for a
# bounded time and the QEMU scenarios. CI runs exactly this (.ci/run).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh

echo "== cargo fmt / clippy"
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -q -- -D warnings

echo "== static musl abupdate"
cargo build -q --release --target x86_64-unknown-linux-musl -p abupdate

echo "== fuzz (bundle reader, ${FUZZ_SECONDS:-60}s)"
bash scripts/fuzz.sh "${FUZZ_SECONDS:-60}"

if [ -x qemu-tests/run.sh ] && [ "${SKIP_QEMU:-0}" != 1 ]; then
  echo "== qemu scenarios"
  bash qemu-tests/run.sh
fi

echo "== crash consistency (abupdate, power cut after every write and sync)"
mkdir -p out
if ! cargo test -p abupdate --features fault-injection --test integration crash -- --nocapture \
  > out/crash-test.log 2>&1; then
  tail -n 60 out/crash-test.log
  exit 1
fi
grep -E "^crash: |test result" out/crash-test.log

echo "== cargo test"
cargo test --workspace
