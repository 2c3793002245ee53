#!/bin/sh
# Tests nix/initrd/mkinitrd.sh's choice of kernel modules against synthetic module trees (no
# kernel, no Nix): a 6.1-style tree (crc32c_generic, ext4's soft dependency on crypto-crc32c), a
# 6.18-style tree (crc32c-cryptoapi, .ko.xz and .ko.zst files), and trees whose modules.builtin is
# empty or missing. Each case builds an initrd, unpacks it and checks the module list and files.
#
#   nix/tests/mkinitrd-test.sh [path/to/mkinitrd.sh]
#
# Needs a static busybox (/usr/bin/busybox or $BUSYBOX), xz and zstd. Run by
# builder/tests/integration/nix.rs (so by `cargo test` and scripts/test.sh).
set -eu
repo=$(cd "$(dirname "$0")/../.." && pwd)
script=${1:-$repo/nix/initrd/mkinitrd.sh}
realbusybox=${BUSYBOX:-/usr/bin/busybox}
work=$(mktemp -d "${TMPDIR:-/tmp}/mkinitrd-test.XXXXXX")
trap 'rm -rf "$work"' EXIT INT TERM
# busybox for the script, listing only a few applets: ~400 applet links per initrd made the cases
# slow to write, and the module choice does not depend on them.
busybox=$work/busybox
printf '#!%s sh
[ "$1" = --list ] && exec echo sh insmod
exec %s "$@"
' "$realbusybox" "$realbusybox" > "$busybox"
chmod +x "$busybox"
failures=0

# What mkSystem passes by default (nix/system/options.nix: initrd.modules ++ kernel.modules, and
# initrd.optionalModules).
required="virtio_pci virtio_blk virtio_scsi sd_mod nvme ahci squashfs ext4 overlay virtio_net"
optional="crc32c"

# tree DIR COMPRESSION: a module tree with modules.dep; each module file holds "module <path>".
# Lines of modules.dep come on stdin ("<path without .ko>: <deps without .ko>").
tree() {
    dir=$1 ext=$2
    mkdir -p "$dir"
    : > "$dir/modules.dep"
    while read -r line; do
        mod=${line%%:*}
        deps=
        for d in ${line#*:}; do deps="$deps $d.ko$ext"; done
        echo "$mod.ko$ext:$deps" >> "$dir/modules.dep"
        mkdir -p "$dir/$(dirname "$mod")"
        printf 'module %s\n' "$mod" > "$dir/$mod.ko"
        case "$ext" in
            .xz) xz --check=crc32 "$dir/$mod.ko" ;;
            .zst) zstd -q --rm "$dir/$mod.ko" ;;
        esac
    done
}

# build NAME MODDIR KVER [modules [optionalModules]]: runs the script; the initrd is unpacked in
# $work/NAME/root, its output in $work/NAME/log. Returns the script's status.
build() {
    name=$1
    mkdir -p "$work/$name/root"
    status=0
    (cd "$work/$name" && busybox=$busybox initScript="$repo/nix/initrd/init.sh" moduleDir=$2 \
        kernelVersion=$3 modules=${4-$required} optionalModules=${5-$optional} out="$work/$name" \
        "$busybox" sh "$script") > "$work/$name/log" 2>&1 || status=$?
    [ "$status" = 0 ] || return "$status"
    (cd "$work/$name/root" && "$busybox" gunzip -c ../initrd | "$busybox" cpio -i -d 2>/dev/null)
}

fail() {
    echo "mkinitrd-test: FAIL: $case: $*" >&2
    [ ! -f "$work/$case/log" ] || sed 's/^/    /' "$work/$case/log" >&2
    failures=$((failures + 1))
}
pass() { echo "mkinitrd-test: ok: $case"; }

# loaded NAME: the initrd's module list (paths relative to lib/modules/<kver>)
loaded() { cat "$work/$1/root/etc/abinit/modules"; }
# before A B: A is listed before B in $case's module list
before() {
    loaded "$case" | awk -v a="$1" -v b="$2" '$0 == a { ia = NR } $0 == b { ib = NR } END { exit !(ia && ib && ia < ib) }'
}

base_tree() { # shared by the 6.1 and 6.18 trees
    cat <<EOF
kernel/drivers/virtio/virtio_pci_modern_dev:
kernel/drivers/virtio/virtio_pci: kernel/drivers/virtio/virtio_pci_modern_dev
kernel/drivers/block/virtio_blk:
kernel/drivers/scsi/scsi_common:
kernel/drivers/scsi/scsi_mod: kernel/drivers/scsi/scsi_common
kernel/drivers/scsi/virtio_scsi: kernel/drivers/scsi/scsi_mod kernel/drivers/scsi/scsi_common
kernel/drivers/scsi/sd_mod: kernel/drivers/scsi/scsi_mod kernel/drivers/scsi/scsi_common
kernel/drivers/ata/libata: kernel/drivers/scsi/scsi_mod
kernel/drivers/ata/libahci: kernel/drivers/ata/libata
kernel/drivers/ata/ahci: kernel/drivers/ata/libahci kernel/drivers/ata/libata
kernel/drivers/nvme/host/nvme-core:
kernel/drivers/nvme/host/nvme: kernel/drivers/nvme/host/nvme-core
kernel/fs/squashfs/squashfs:
kernel/lib/crc16:
kernel/fs/mbcache:
kernel/fs/jbd2/jbd2:
kernel/fs/ext4/ext4: kernel/lib/crc16 kernel/fs/mbcache kernel/fs/jbd2/jbd2
kernel/fs/overlayfs/overlay:
kernel/net/core/failover:
kernel/drivers/net/net_failover: kernel/net/core/failover
kernel/drivers/net/virtio_net: kernel/drivers/net/net_failover kernel/net/core/failover
EOF
}

# --- 6.1: today's names; ext4 asks for crc32c through a soft dependency ----------------------
case=linux-6.1
k61=$work/trees/6.1.0-test
{ base_tree; echo "kernel/crypto/crc32c_generic:"; echo "kernel/arch/x86/crypto/crc32c-intel:"; } | tree "$k61" ""
echo "kernel/fs/fat/vfat.ko" > "$k61/modules.builtin"
cat > "$k61/modules.alias" <<EOF
alias crypto-crc32c-intel crc32c_intel
alias crypto-crc32c crc32c_intel
alias crc32c crc32c_intel
alias crypto-crc32c crc32c_generic
alias crc32c crc32c_generic
alias fs-ext4 ext4
EOF
printf '# Soft dependencies extracted from modules themselves.\nsoftdep ext4 pre: crypto-crc32c\nsoftdep jbd2 pre: crypto-crc32c\n' > "$k61/modules.softdep"
if ! build "$case" "$k61" 6.1.0-test; then fail "mkinitrd failed"
elif ! before kernel/crypto/crc32c_generic.ko kernel/fs/ext4/ext4.ko; then fail "crc32c_generic (ext4's soft dependency) not loaded before ext4"
elif ! before kernel/arch/x86/crypto/crc32c-intel.ko kernel/fs/ext4/ext4.ko; then fail "crc32c-intel (an alias of crypto-crc32c) not loaded before ext4"
elif ! before kernel/drivers/virtio/virtio_pci_modern_dev.ko kernel/drivers/virtio/virtio_pci.ko; then fail "a dependency after its module"
elif ! before kernel/fs/jbd2/jbd2.ko kernel/fs/ext4/ext4.ko; then fail "jbd2 after ext4"
elif [ "$(loaded "$case" | wc -l)" != 23 ]; then fail "expected 23 modules, got: $(loaded "$case" | tr '\n' ' ')"
elif ! grep -qx 'module kernel/fs/ext4/ext4' "$work/$case/root/lib/modules/6.1.0-test/kernel/fs/ext4/ext4.ko"; then fail "ext4.ko not copied"
else pass; fi

# --- 6.18: crc32c_generic is now crc32c-cryptoapi; modules are compressed ---------------------
for ext in .xz .zst; do
    case=linux-6.18$ext
    k618=$work/trees/6.18.0-test$ext
    { base_tree; echo "kernel/crypto/crc32c-cryptoapi:"; } | tree "$k618" "$ext"
    # nvme built in, as in many distribution kernels
    echo "kernel/drivers/nvme/host/nvme.ko" > "$k618/modules.builtin"
    echo "kernel/drivers/nvme/host/nvme-core.ko" >> "$k618/modules.builtin"
    sed -i '/nvme/d' "$k618/modules.dep"
    rm -r "$k618/kernel/drivers/nvme"
    printf 'alias crypto-crc32c crc32c_cryptoapi\nalias crc32c crc32c_cryptoapi\n' > "$k618/modules.alias"
    m=$work/$case/root/lib/modules/6.18.0-test
    if ! build "$case" "$k618" 6.18.0-test; then fail "mkinitrd failed"
    elif ! loaded "$case" | grep -qx kernel/crypto/crc32c-cryptoapi.ko; then fail "optional crc32c (alias of crc32c-cryptoapi) not loaded: $(loaded "$case" | tr '\n' ' ')"
    elif loaded "$case" | grep -q nvme; then fail "built-in nvme listed"
    elif ! before kernel/fs/jbd2/jbd2.ko kernel/fs/ext4/ext4.ko; then fail "jbd2 after ext4"
    elif ! grep -qx 'module kernel/fs/ext4/ext4' "$m/kernel/fs/ext4/ext4.ko"; then fail "ext4.ko$ext not decompressed into ext4.ko"
    elif ! grep -qx 'module kernel/crypto/crc32c-cryptoapi' "$m/kernel/crypto/crc32c-cryptoapi.ko"; then fail "crc32c-cryptoapi.ko$ext not decompressed"
    elif find "$work/$case/root" -name "*.ko$ext" | grep -q .; then fail "a compressed module left in the initrd"
    else pass; fi
done

# A required module the kernel does not have: the build fails and names the kernel version.
case=linux-6.18-required-missing
if build "$case" "$k618" 6.18.0-test "$required crc32c_generic" ""; then fail "built without crc32c_generic"
elif ! grep -q 'kernel 6.18.0-test has no module, built-in module or alias named: crc32c_generic' "$work/$case/log"; then fail "no clear error"
else pass; fi

# An optional module the kernel does not have: skipped with a note.
case=linux-6.18-optional-absent
if ! build "$case" "$k618" 6.18.0-test "$required" "crc32c_generic"; then fail "mkinitrd failed"
elif ! grep -q 'optional module crc32c_generic: not in kernel 6.18.0-test, skipped' "$work/$case/log"; then fail "no note about the skipped module"
else pass; fi

# --- modules.builtin empty, or missing: nothing is built in ---------------------------------
for variant in empty missing; do
    case=builtin-$variant
    kb=$work/trees/builtin-$variant
    base_tree | tree "$kb" ""
    if [ "$variant" = empty ]; then : > "$kb/modules.builtin"; fi
    if ! build "$case" "$kb" 6.6.0-test; then fail "mkinitrd failed"
    elif ! before kernel/fs/jbd2/jbd2.ko kernel/fs/ext4/ext4.ko; then fail "ext4 and jbd2 not both loaded: $(loaded "$case" | tr '\n' ' ')"
    elif [ "$(loaded "$case" | wc -l)" != 21 ]; then fail "expected 21 modules, got: $(loaded "$case" | tr '\n' ' ')"
    else pass; fi
done

if [ "$failures" != 0 ]; then
    echo "mkinitrd-test: $failures failed" >&2
    exit 1
fi
echo "mkinitrd-test: all passed"
