#!/bin/sh
# Builds the nixpkgs-free test system (nix/fixture) and prints its toplevel store path on stdout
# (everything else goes to stderr).
#
# Needs, on Debian 12: apt-get install -y nix-bin busybox-static linux-image-amd64
# plus a Rust toolchain with the x86_64-unknown-linux-musl target (added with rustup if missing).
# Run as root (Debian's nix-bin without a daemon builds as root, with the nixbld build users its
# package creates; without them, as root itself).
#
# usage: scripts/build-fixture.sh [--version V] [--broken] [--unhealthy] [--hung] [--pubkey FILE.pub]
#            [--compatible STRING] [--out-link PATH | --no-out-link] [--abupdate STATIC_BINARY]
#            [--kernel-version KVER] [--no-e2fsprogs] [--no-verity] [--hw-watchdog S]
#            [--channel URL [--update-interval S] [--update-jitter J] [--update-reboot R]
#             [--channel-medium DEVICE:MOUNTPOINT]]
#
# Defaults: version 1, healthy, not broken, no key, compatible "qemu-test", out link
# ./result-fixture-<version>[-broken|-unhealthy], abupdate built here with
# cargo build --release --target x86_64-unknown-linux-musl -p abupdate (in $CARGO_TARGET_DIR or
# target/). --channel and the rest: unattended updates (nix/fixture/default.nix, docs/nix.md).
# Same arguments, same store path: running it again only re-checks.
set -eu

die() {
    echo "build-fixture: error: $*" >&2
    exit 1
}
usage() {
    sed -n '/^# usage:/,/^set -eu/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2
    exit 2
}

repo=$(cd "$(dirname "$0")/.." && pwd)
version=1
broken=false
healthy=true
hung=false
hwwatchdog=
pubkey=
compatible=qemu-test
outlink=
nooutlink=
abupdate=
kver=
e2fsprogs=true
verity=true
channel=
interval=
jitter=
reboot=
medium=

while [ $# -gt 0 ]; do
    case "$1" in
        --version) [ $# -ge 2 ] || usage; version=$2; shift 2 ;;
        --broken) broken=true; shift ;;
        --unhealthy) healthy=false; shift ;;
        --hung) hung=true; shift ;;
        --hw-watchdog) [ $# -ge 2 ] || usage; hwwatchdog=$2; shift 2 ;;
        --pubkey) [ $# -ge 2 ] || usage; pubkey=$2; shift 2 ;;
        --compatible) [ $# -ge 2 ] || usage; compatible=$2; shift 2 ;;
        --out-link) [ $# -ge 2 ] || usage; outlink=$2; shift 2 ;;
        --no-out-link) nooutlink=1; shift ;;
        --abupdate) [ $# -ge 2 ] || usage; abupdate=$2; shift 2 ;;
        --kernel-version) [ $# -ge 2 ] || usage; kver=$2; shift 2 ;;
        --no-e2fsprogs) e2fsprogs=false; shift ;;
        --no-verity) verity=false; shift ;;
        --channel) [ $# -ge 2 ] || usage; channel=$2; shift 2 ;;
        --update-interval) [ $# -ge 2 ] || usage; interval=$2; shift 2 ;;
        --update-jitter) [ $# -ge 2 ] || usage; jitter=$2; shift 2 ;;
        --update-reboot) [ $# -ge 2 ] || usage; reboot=$2; shift 2 ;;
        --channel-medium) [ $# -ge 2 ] || usage; medium=$2; shift 2 ;;
        -h|--help) usage ;;
        *) echo "build-fixture: unknown argument: $1" >&2; usage ;;
    esac
done

command -v nix-build >/dev/null 2>&1 || die "nix-build not found (apt-get install -y nix-bin)"
[ -x /usr/bin/busybox ] || die "/usr/bin/busybox not found (apt-get install -y busybox-static)"
ls /boot/vmlinuz-* >/dev/null 2>&1 || die "no /boot/vmlinuz-* (apt-get install -y linux-image-amd64)"

# --- the static musl abupdate ----------------------------------------------------------------
if [ -z "$abupdate" ]; then
    target=x86_64-unknown-linux-musl
    if command -v rustup >/dev/null 2>&1 && ! rustup target list --installed | grep -qx "$target"; then
        echo "build-fixture: rustup target add $target" >&2
        rustup target add "$target" >&2
    fi
    echo "build-fixture: cargo build --release --target $target -p abupdate" >&2
    (cd "$repo" && cargo build --quiet --release --target "$target" -p abupdate) >&2 ||
        die "building abupdate for $target failed"
    abupdate=${CARGO_TARGET_DIR:-$repo/target}/$target/release/abupdate
    case "$abupdate" in /*) ;; *) abupdate=$repo/$abupdate ;; esac
fi
[ -f "$abupdate" ] || die "$abupdate does not exist"
abupdate=$(realpath "$abupdate")
if [ -n "$pubkey" ]; then
    [ -f "$pubkey" ] || die "$pubkey does not exist"
    pubkey=$(realpath "$pubkey")
fi

# --- nix-build -------------------------------------------------------------------------------
# Debian's nix-bin (2.8): the sandbox does not work there, and there is no route to a binary cache
# (skip it instead of waiting for DNS). Build users: the nixbld group if it has members, else root.
set -- --option sandbox false --option substituters ""
if [ "$(id -u)" = 0 ]; then
    members=$(getent group nixbld 2>/dev/null | cut -d: -f4)
    [ -n "$members" ] || set -- "$@" --option build-users-group ""
elif [ ! -S /nix/var/nix/daemon-socket/socket ]; then
    die "run as root, or start nix-daemon (Debian: apt-get install nix-setup-systemd)"
fi

set -- "$@" "$repo/nix/fixture" \
    --argstr version "$version" --arg broken "$broken" --arg healthy "$healthy" \
    --argstr compatible "$compatible" --argstr abupdate "$abupdate" \
    --arg hostE2fsprogs "$e2fsprogs" --arg verity "$verity"
[ -z "$pubkey" ] || set -- "$@" --argstr pubkey "$pubkey"
[ -z "$kver" ] || set -- "$@" --argstr kernelVersion "$kver"
[ -z "$channel" ] || set -- "$@" --argstr channel "$channel"
[ -z "$interval" ] || set -- "$@" --argstr updateInterval "$interval"
[ -z "$jitter" ] || set -- "$@" --argstr updateJitter "$jitter"
[ -z "$reboot" ] || set -- "$@" --argstr updateReboot "$reboot"
[ -z "$medium" ] || set -- "$@" --argstr channelMedium "$medium"
[ "$hung" = false ] || set -- "$@" --arg hung true
[ -z "$hwwatchdog" ] || set -- "$@" --argstr hwWatchdog "$hwwatchdog"

if [ -n "$nooutlink" ]; then
    set -- "$@" --no-out-link
else
    if [ -z "$outlink" ]; then
        outlink=result-fixture-$version
        [ "$broken" = false ] || outlink=$outlink-broken
        [ "$healthy" = true ] || outlink=$outlink-unhealthy
        [ "$hung" = false ] || outlink=$outlink-hung
    fi
    set -- "$@" --out-link "$outlink"
fi

echo "build-fixture: nix-build $*" >&2
out=$(nix-build "$@") || die "nix-build failed"
echo "$out"
