#!/usr/bin/env bash
# The test command: installs what is missing, then runs lints, all tests, the fuzzer for a
# bounded time and the QEMU scenarios. CI runs exactly this (.ci/run).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
mkdir -p out
rm -f out/qemu-tests.log out/crash-test.log out/cargo-test.log out/flake-check.log

echo "== cargo fmt / clippy"
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -q -- -D warnings
# abupdate without HTTP(S) (a build for air-gapped sites) stays warning-free too.
cargo clippy -p abupdate --no-default-features -q -- -D warnings
# The updater's folders import downward only (docs/updater.md, "The source, by folder").
python3 scripts/updater-imports.py

echo "== static musl abupdate (stripped size goal: 4 MiB)"
bash scripts/size.sh

echo "== fuzz (bundle reader, ${FUZZ_SECONDS:-60}s)"
bash scripts/fuzz.sh "${FUZZ_SECONDS:-60}"

if [ -x qemu-tests/run.sh ] && [ "${SKIP_QEMU:-0}" != 1 ]; then
  echo "== qemu scenarios"
  mkdir -p out
  bash qemu-tests/run.sh | tee out/qemu-tests.log
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
cargo test --workspace 2>&1 | tee out/cargo-test.log

echo "== GitHub workflows (actionlint, zizmor)"
lint=${AB_LINT_VENV:-/var/cache/abupdate-ci/lint-venv}/bin
"$lint/actionlint" .github/workflows/*.yml
"$lint/zizmor" --offline --persona pedantic -q .github/workflows/

echo "== the flake with Nix 2.26 against the mock nixpkgs (nix flake check boots the example image)"
if ! bash scripts/flake-check.sh > out/flake-check.log 2>&1; then
  tail -n 80 out/flake-check.log
  exit 1
fi
grep -E "^flake-check:|vps-boot: seen" out/flake-check.log

echo "== man pages and shell completions (generated from the clap definitions)"
docs=$(mktemp -d)
bash scripts/docgen.sh "$docs"
for page in abupdate-apply abbuild-build; do
  # Renders without groff warnings, with its options in it.
  man --warnings -l "$docs/man1/$page.1" >"$docs/page" 2>"$docs/warnings"
  if [ -s "$docs/warnings" ]; then cat "$docs/warnings"; exit 1; fi
  grep -q -- "--help" "$docs/page" || { echo "man page $page: no options rendered"; exit 1; }
done
# The bash completion loads and completes a subcommand.
completed=$(bash -c 'source "$1" && complete -p abupdate >/dev/null &&
  COMP_WORDS=(abupdate mark-) COMP_CWORD=1 COMP_LINE="abupdate mark-" COMP_POINT=14 &&
  _abupdate abupdate mark- abupdate && echo "${COMPREPLY[*]}"' _ "$docs/completions/abupdate.bash")
[ "$completed" = "mark-good mark-bad mark-corrupt" ] || { echo "bash completion: got '$completed'"; exit 1; }
rm -rf "$docs"

# One closing line for everything above: cargo's test counts, the crash test and the QEMU
# scenarios (whose runners print their own "N passed, M failed" lines).
read -r passed failed < <(
  { grep -hE '^test result:' out/cargo-test.log out/crash-test.log | awk '{print $4, $6}'
    grep -hE '^qemu: [0-9]+ passed, [0-9]+ failed' out/qemu-tests.log 2>/dev/null | awk '{print $2, $4}'
  } | awk '{p += $1; f += $2} END {print p + 0, f + 0}')
echo "all: $passed passed, $failed failed"
test "$failed" -eq 0
