#!/usr/bin/env bash
# The flake, evaluated and built by Nix 2.26 (the Debian 13 root of scripts/trixie-root.sh)
# against nix/tests/mock-nixpkgs: `nix flake check` (which builds the example image with the
# Nix-built abbuild and boots it in QEMU under SeaBIOS and OVMF: checks.x86_64-linux.vps-boot
# and vps-boot-uefi) and `nix build .#vps`.
#
#   bash scripts/flake-check.sh     # as root, from a git clone (Nix reads tracked files only)
#
# The mock stands the packages in with the files it is given: the static abupdate
# (scripts/size.sh builds it), this checkout's abbuild and abdocgen (debug builds are enough:
# the check runs abbuild once), copied into out/ so that the root sees them under /src.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "${1:-}" = --inside ]; then
  # In the root: /src is this checkout. Nix reads it as a git repository; a checkout owned by
  # another user than root would be refused as unsafe.
  export HOME=/src/out/flake-home
  mkdir -p "$HOME"
  git config --global --replace-all safe.directory /src
  mock=path:/src/nix/tests/mock-nixpkgs
  export ABUPDATE_STATIC=/src/out/flake-bin/abupdate ABBUILD_BIN=/src/out/flake-bin/abbuild \
    ABDOCGEN_BIN=/src/out/flake-bin/abdocgen
  flags=(--impure --no-write-lock-file --override-input nixpkgs "$mock" --print-build-logs)
  nix --version
  echo "flake-check: nix flake check (the vps-boot check boots the example image)"
  nix flake check "${flags[@]}" /src
  echo "flake-check: nix build .#vps"
  nix build "${flags[@]}" --no-link --print-out-paths "/src#vps"
  exit 0
fi

[ -d .git ] || {
  echo "flake-check: $(pwd) is not a plain git clone (a worktree's .git is outside the root)" >&2
  exit 2
}
target=${CARGO_TARGET_DIR:-target}
static=$target/x86_64-unknown-linux-musl/release/abupdate
[ -x "$static" ] || cargo build --quiet --release --target x86_64-unknown-linux-musl -p abupdate
cargo build --quiet -p abbuild -p abdocgen
mkdir -p out/flake-bin
cp "$static" "$target/debug/abbuild" "$target/debug/abdocgen" out/flake-bin/
start=$(date +%s)
bash scripts/trixie-root.sh run bash scripts/flake-check.sh --inside
echo "flake-check: passed in $(($(date +%s) - start)) s"
