#!/usr/bin/env bash
# Writes the man pages and shell completions of abbuild and abupdate, generated from their clap
# definitions by abdocgen (docgen/):
#   DIR/man1/abupdate.1, DIR/man1/abupdate-apply.1, ...   (man -l DIR/man1/abupdate.1)
#   DIR/completions/abupdate.bash, _abupdate, abupdate.fish (and the same for abbuild)
# Usage: bash scripts/docgen.sh [DIR]   (default: out/docgen)
set -euo pipefail
cd "$(dirname "$0")/.."
dir=${1:-out/docgen}
cargo build -q -p abdocgen
mkdir -p "$dir"
for tool in abbuild abupdate; do
  "${CARGO_TARGET_DIR:-target}/debug/abdocgen" "$tool" "$dir" >/dev/null
done
echo "docgen: $(ls "$dir"/man1 | wc -l) man pages, $(ls "$dir"/completions | wc -l) completion scripts in $dir"
