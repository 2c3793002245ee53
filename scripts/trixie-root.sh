#!/usr/bin/env bash
# A Debian 13 (trixie) root for what Debian 12 cannot run: Nix 2.26 (current nixpkgs needs
# Nix >= 2.18; Debian 12 has 2.8) and GRUB 2.12 (Debian 12 has 2.06). Made once with
# debootstrap and kept outside the checkout, so clean clones on the same machine reuse it.
#
#   bash scripts/trixie-root.sh            # makes the root if missing; prints its path
#   bash scripts/trixie-root.sh run CMD..  # runs CMD in it, with this checkout at /src
#
# `run` gives the command a private mount namespace (/proc, /dev and /src are mounted in it
# and vanish with it), so nothing is left mounted on the host. AB_TRIXIE_ROOT moves the root.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
root=${AB_TRIXIE_ROOT:-/var/cache/abupdate-ci/trixie}
# Bump when the package set below changes, so an older root is made again.
stamp="$root/.abupdate-root-v2"
packages=(nix-bin grub-common grub-pc-bin grub-efi-amd64-bin qemu-system-x86 ovmf
  ca-certificates xz-utils
  # The flake's checks against nix/tests/mock-nixpkgs, which takes its kernel, busybox,
  # systemd-boot and the tools abbuild calls from this root (scripts/flake-check.sh); git: Nix
  # reads the checkout as a git flake.
  git linux-image-amd64 busybox-static systemd-boot-efi squashfs-tools qemu-utils dosfstools)

# Installs the package list into root $1 (apt-get is idempotent: an older root only gets
# what is new on the list).
install_packages() {
  unshare --mount --propagation private bash -c '
    set -e
    mount -t proc proc "$0/proc"
    mount --rbind /dev "$0/dev"
    chroot "$0" env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    chroot "$0" env DEBIAN_FRONTEND=noninteractive \
      apt-get install -y -qq --no-install-recommends "$@" >/dev/null
  ' "$1" "${packages[@]}"
}

make_root() {
  command -v debootstrap >/dev/null || {
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -qq debootstrap >/dev/null
  }
  # The same Debian mirror the host uses (trixie is served beside bookworm).
  local mirror
  mirror=$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
  mirror=${mirror:-http://deb.debian.org/debian}
  local tmp="$root.partial"
  rm -rf "$tmp"
  mkdir -p "$(dirname "$root")"
  echo "trixie-root: debootstrap trixie from $mirror (a few minutes)" >&2
  # minbase: --include=nix-bin fails in debootstrap (a virtual perl package is not resolved),
  # so the packages come with apt inside the root.
  debootstrap --variant=minbase trixie "$tmp" "$mirror" >"$tmp.log" 2>&1 ||
    { tail -n 30 "$tmp.log" >&2; exit 1; }
  cp /etc/resolv.conf "$tmp/etc/resolv.conf"
  install_packages "$tmp"
  mkdir -p "$tmp/etc/nix" "$tmp/src"
  # As root without build users or a sandbox (no user namespaces needed), flakes on.
  cat >"$tmp/etc/nix/nix.conf" <<'EOF'
sandbox = false
build-users-group =
experimental-features = nix-command flakes
substituters =
EOF
  rm -rf "$root"
  mv "$tmp" "$root"
  rm -f "$tmp.log"
  touch "$root/.abupdate-root" "$stamp"
}

if [ ! -e "$root/.abupdate-root" ] && [ ! -e "$root/.abupdate-root-v1" ]; then
  make_root
elif [ ! -e "$stamp" ]; then
  # A root made from an older list: add what is new, keep its Nix store.
  echo "trixie-root: installing the packages new on the list" >&2
  cp /etc/resolv.conf "$root/etc/resolv.conf"
  install_packages "$root"
  touch "$root/.abupdate-root" "$stamp"
fi

if [ "${1:-}" = run ]; then
  shift
  exec unshare --mount --propagation private bash -c '
    set -e
    root=$1 repo=$2
    shift 2
    mount -t proc proc "$root/proc"
    mount --rbind /dev "$root/dev"
    mount --bind "$repo" "$root/src"
    exec chroot "$root" env -i HOME=/root PATH=/usr/sbin:/usr/bin:/sbin:/bin TERM=dumb \
      bash -c "cd /src && exec \"\$@\"" _ "$@"
  ' _ "$root" "$repo" "$@"
fi
echo "$root"
