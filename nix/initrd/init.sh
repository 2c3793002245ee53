#!/bin/sh
# abinit: the initrd's init (PID 1), shared by the production system (nix/default.nix) and the
# test fixture (nix/fixture). Runs under busybox sh with /bin holding busybox applets.
#
# Contract (docs/layout.md, docs/nix.md):
#   kernel command line:  ab.slot=<a|b> root=PARTLABEL=root-<a|b> [panic=N]
#                         optional: abinit.timeout=<seconds to wait for devices, default 30>
#                                   abinit.watchdog=<reboot if not done after this, default 300, 0: off>
#                                   abinit.debug (trace this script on the console)
#                                   abinit.hwwatchdog=<arm /dev/watchdog with this timeout, 0: off>
#                                   ab.esp=<the ESP's partition GUID> (GRUB: the disk it booted
#                                   from; systemd-boot's LoaderDevicePartUUID says the same)
#                                   abinit.verity=<root hash>,<salt>,<data blocks>,<hash offset>
#                                     (open the slot through dm-verity: section 4b)
#                                   abinit.verity_scan=<0|1, default 1: read the whole slot first>
#   /etc/abinit/modules   kernel modules to insmod, one path per line, dependencies first
#                         (computed from modules.dep when the initrd is built)
#   /bin/veritysetup, /bin/abupdate  needed only with abinit.verity= (section 4b)
#   result:               the slot's squashfs read-only at /, tmpfs at /run and /tmp, the data
#                         partition at /data (ext4, created on first boot), /var bind-mounted
#                         from /data/var, /run/abinit/env describing the boot; then
#                         switch_root into the root's /init.
#
# On ANY failure it prints "abinit: FATAL: ..." and exits. PID 1 exiting makes the kernel panic,
# and the kernel's panic= timeout (forced to 10 s if the command line has none) reboots the
# machine, so the bootloader's boot counter counts the failed boot. It never opens a shell.

PATH=/bin:/sbin
export PATH
umask 022

say() {
    echo "abinit: $*"
}

die() {
    echo "abinit: FATAL: $*"
    # Without panic=N the kernel would hang forever after the panic: make it reboot instead.
    if [ -w /proc/sys/kernel/panic ] && [ "$(cat /proc/sys/kernel/panic 2>/dev/null)" = 0 ]; then
        echo 10 > /proc/sys/kernel/panic
    fi
    echo "abinit: giving up: the kernel panics now and reboots after $(cat /proc/sys/kernel/panic 2>/dev/null || echo '?') s"
    sync
    trap - EXIT
    exit 1
}

# A bug in this script (an unexpected exit) must still be loud.
trap 'echo "abinit: FATAL: init script exited unexpectedly"' EXIT

# --- 1. pseudo filesystems and the console -------------------------------------------------
mkdir -p /dev /proc /sys /run /sysroot
mount -t devtmpfs -o mode=0755,nosuid devtmpfs /dev || die "cannot mount devtmpfs on /dev"
mount -t proc -o nosuid,nodev,noexec proc /proc || die "cannot mount /proc"
mount -t sysfs -o nosuid,nodev,noexec sysfs /sys || die "cannot mount /sys"
# The kernel gives PID 1 /dev/console if the initrd has it; make sure we talk to the console.
if [ -c /dev/console ]; then
    exec </dev/console >/dev/console 2>&1
fi

# --- 2. kernel command line ----------------------------------------------------------------
slot=
root=
timeout=30
watchdog=300
panic_set=
for word in $(cat /proc/cmdline); do
    case "$word" in
        ab.slot=*) slot=${word#ab.slot=} ;;
        root=*) root=${word#root=} ;;
        abinit.timeout=*) timeout=${word#abinit.timeout=} ;;
        abinit.watchdog=*) watchdog=${word#abinit.watchdog=} ;;
        abinit.debug) set -x ;;
        panic=*) panic_set=1 ;;
    esac
done
kver=$(uname -r)
say "starting (kernel $kver, cmdline: $(cat /proc/cmdline))"
[ -n "$panic_set" ] || say "warning: no panic= on the kernel command line; using panic=10"
case "$slot" in
    a|b) ;;
    "") die "no ab.slot= on the kernel command line" ;;
    *) die "ab.slot=$slot: the slot must be a or b" ;;
esac
case "$timeout" in
    ''|*[!0-9]*) die "abinit.timeout=$timeout is not a number of seconds" ;;
esac
case "$watchdog" in
    ''|*[!0-9]*) die "abinit.watchdog=$watchdog is not a number of seconds" ;;
esac
# A step that hangs (a device that never answers, ...) must not hang the boot forever: reboot
# after $watchdog seconds, so that the boot counter counts this try too. 0 disables it.
watchdog_pid=
if [ "$watchdog" -gt 0 ]; then
    (
        # Stopped before the switch: take the sleep along, so nothing of the initrd lingers.
        trap 'kill "$sleeper" 2>/dev/null; exit 0' TERM
        sleep "$watchdog" &
        sleeper=$!
        wait "$sleeper"
        echo "abinit: FATAL: not done after $watchdog s (abinit.watchdog); rebooting"
        sync
        echo b > /proc/sysrq-trigger
    ) &
    watchdog_pid=$!
fi
case "$root" in
    PARTLABEL=*) rootlabel=${root#PARTLABEL=} ;;
    "") die "no root= on the kernel command line" ;;
    *) die "root=$root: only root=PARTLABEL=<label> is supported" ;;
esac
case "$rootlabel" in
    root-a|root-b)
        [ "$rootlabel" = "root-$slot" ] ||
            die "ab.slot=$slot does not match root=PARTLABEL=$rootlabel (broken boot entry)"
        ;;
esac
say "slot $slot, root PARTLABEL=$rootlabel"

# --- 3. kernel modules ---------------------------------------------------------------------
# insmod in the order computed at build time. A module that is already loaded is fine; one that
# fails (e.g. crc32c-intel on a CPU without SSE4.2) is reported, and if it mattered the mount
# below fails with a clear message.
if [ -f /etc/abinit/modules ]; then
    while read -r mod; do
        [ -n "$mod" ] || continue
        name=${mod##*/}
        name=${name%%.ko*}
        name=$(echo "$name" | tr - _)
        [ -d "/sys/module/$name" ] && continue
        out=$(insmod "/lib/modules/$kver/$mod" 2>&1) || say "warning: module $name not loaded: ${out##*: }"
    done < /etc/abinit/modules
fi

# --- 3b. the hardware watchdog (abinit.hwwatchdog=S, 0 or absent: off) -----------------------
# Armed here, right after its driver was loaded above, when the command line asks for it and a
# watchdog device exists. The initrd feeds it until the switch; then it is closed without the
# magic 'V', so it stays armed (the kernel says "watchdog did not stop!" and pings it once), and
# the system's feeder, started by its init, takes over (nix/system/watchdog-feeder.sh). A system
# that wedges before its feeder runs, or whose init stops reaping, is reset after S s, and the
# bootloader's boot counter counts the try.
hwwatchdog=0
hw_watchdog_pid=
for word in $(cat /proc/cmdline); do
    case "$word" in abinit.hwwatchdog=*) hwwatchdog=${word#abinit.hwwatchdog=} ;; esac
done
case "$hwwatchdog" in
    ''|*[!0-9]*) die "abinit.hwwatchdog=$hwwatchdog is not a number of seconds" ;;
esac
if [ "$hwwatchdog" -gt 0 ]; then
    if [ -c /dev/watchdog ]; then
        feed=$((hwwatchdog / 4))
        [ "$feed" -ge 1 ] || feed=1
        watchdog -F -T "$hwwatchdog" -t "$feed" /dev/watchdog &
        hw_watchdog_pid=$!
        say "hardware watchdog armed: the machine resets after $hwwatchdog s without a feed"
    else
        say "no hardware watchdog device: abinit.hwwatchdog=$hwwatchdog not armed"
    fi
fi

# Leaves the hardware watchdog armed for the system: SIGKILL, so busybox watchdog cannot write
# the magic 'V' that would stop it, and waited for, so the device is free for the system.
handover_hw_watchdog() {
    [ -n "$hw_watchdog_pid" ] || return 0
    echo "AB_WATCHDOG=/dev/watchdog" >> /run/abinit/env
    echo "AB_WATCHDOG_TIMEOUT=$hwwatchdog" >> /run/abinit/env
    kill -KILL "$hw_watchdog_pid" 2>/dev/null
    wait "$hw_watchdog_pid" 2>/dev/null
}

# --- 4. find partitions by PARTLABEL (no udev) ---------------------------------------------
# Prints the sysfs names (e.g. vda2) of all block devices whose uevent has PARTNAME=$1,
# optionally only the partitions of the disk whose sysfs directory is $2.
find_label() {
    for ev in /sys/class/block/*/uevent; do
        [ -f "$ev" ] || continue
        if grep -qx "PARTNAME=$1" "$ev"; then
            d=${ev%/uevent}
            if [ -n "$2" ]; then
                [ "$(readlink -f "$d/..")" = "$2" ] || continue
            fi
            echo "${d##*/}"
        fi
    done
}

# Waits up to $timeout seconds for exactly one partition labelled $1 (on disk $2 if given) and
# prints its /dev path.
wait_label() {
    waited=0
    while :; do
        found=$(find_label "$1" "$2")
        set -- "$1" "$2" $found
        if [ $# -gt 3 ]; then
            label=$1
            shift 2
            echo "abinit: several partitions are labelled $label: $*; refusing to guess" >&2
            return 1
        fi
        if [ $# -eq 3 ] && [ -b "/dev/$3" ]; then
            echo "/dev/$3"
            return 0
        fi
        if [ "$waited" -ge "$((timeout * 10))" ]; then
            return 1
        fi
        [ "$waited" = 20 ] && echo "abinit: waiting up to $timeout s for PARTLABEL=$1" >&2
        usleep 100000
        waited=$((waited + 1))
    done
}

# --- 4a. several disks with the slot (a second disk holds a copy of the image) --------------
# The boot loader names the disk it came from by its ESP's partition GUID: GRUB passes
# ab.esp=<GUID> (probe --part-uuid), systemd-boot sets the EFI variable LoaderDevicePartUUID.
# boot-check gives every disk its own ESP GUID at its first boot (docs/layout.md, "Per-machine
# identity"), so from then on exactly one disk matches. Prints the GUID in lower case, or
# nothing if the loader did not say.
loader_esp() {
    for word in $(cat /proc/cmdline); do
        case "$word" in ab.esp=*) echo "${word#ab.esp=}" | tr A-F a-f; return 0 ;; esac
    done
    [ -d /sys/firmware/efi ] || return 0
    vars=/sys/firmware/efi/efivars
    var=$vars/LoaderDevicePartUUID-4a67b082-0a4c-41cf-b6c7-440b29bb8c4f
    mounted=
    if [ ! -e "$var" ] && mount -t efivarfs efivarfs "$vars" 2>/dev/null; then
        mounted=1
    fi
    # 4 bytes of attributes, then the GUID in UTF-16.
    [ -f "$var" ] && dd if="$var" bs=1 skip=4 2>/dev/null | tr -d '\000' | tr A-F a-f
    [ -z "$mounted" ] || umount "$vars"
}

# Prints the GUID of partition 1 (the ESP) in the primary and in the backup GPT of disk $1
# (sysfs name), read raw: sysfs does not show partition GUIDs. Either copy may be the one the
# loader read (a power cut during boot-check's rewrite leaves the primary failing its checksum).
disk_esp_guids() {
    ss=$(cat "/sys/class/block/$1/queue/logical_block_size" 2>/dev/null || echo 512)
    for lba in 1 $(( $(cat "/sys/class/block/$1/size") * 512 / ss - 1 )); do
        dd if="/dev/$1" of=/tmp/abinit-gpt bs="$ss" skip="$lba" count=1 2>/dev/null || continue
        # "EFI PART", then the partition array's first sector at byte 72 (two 32-bit halves).
        [ "$(hexdump -n 8 -e '8/1 "%02x"' /tmp/abinit-gpt)" = 4546492050415254 ] || continue
        set -- "$1" $(hexdump -s 72 -n 8 -e '2/4 "%u "' /tmp/abinit-gpt)
        dd if="/dev/$1" of=/tmp/abinit-gpt bs="$ss" skip=$(( $3 * 4294967296 + $2 )) count=1 \
            2>/dev/null &&
            hexdump -s 16 -n 16 -e '16/1 "%02x"' /tmp/abinit-gpt |
            sed 's/^\(..\)\(..\)\(..\)\(..\)\(..\)\(..\)\(..\)\(..\)\(....\)/\4\3\2\1-\6\5-\8\7-\9-/'
        echo
        set -- "$1"
    done
    rm -f /tmp/abinit-gpt
}

# Waits up to $timeout seconds for a partition labelled $1 and prints its /dev path: the one on
# the disk the loader came from ($2: its ESP GUID) when several disks have one. Without a match
# it gives the other disks 3 s to show up, then takes the only candidate, or with several (copies
# of the image that never booted: the loader cannot tell them apart) the first in the kernel's
# order, and says so; that disk's boot-check gives it its own GUIDs, so the next boot can tell.
wait_root() {
    want_label=$1
    want_esp=$2
    waited=0
    while :; do
        found=$(find_label "$want_label")
        matched=
        if [ -n "$want_esp" ]; then
            for part in $found; do
                dsys=$(readlink -f "/sys/class/block/$part/..")
                if disk_esp_guids "${dsys##*/}" | grep -qxF "$want_esp"; then
                    matched="$matched $part"
                fi
            done
        fi
        set -- $matched
        if [ $# = 1 ] && [ -b "/dev/$1" ]; then
            [ "$found" = "$1" ] ||
                echo "abinit: several disks have PARTLABEL=$want_label ($(echo $found)): taking $1, on the disk the boot loader came from (ESP $want_esp)" >&2
            echo "/dev/$1"
            return 0
        fi
        # Several with the loader's GUID: take the first of them. None: give the loader's disk
        # 3 s to show up, then take the first of all.
        [ $# -gt 1 ] || set -- $found
        if [ $# -ge 1 ] && [ -b "/dev/$1" ] &&
            { [ -z "$want_esp" ] || [ -n "$matched" ] || [ "$waited" -ge 30 ]; }; then
            if [ $# -gt 1 ]; then
                echo "abinit: warning: several disks have PARTLABEL=$want_label ($*) and the boot loader's ESP (${want_esp:-not given}) is on none or several of them: guessing $1" >&2
                : > /tmp/abinit-guessed
            fi
            echo "/dev/$1"
            return 0
        fi
        if [ "$waited" -ge "$((timeout * 10))" ]; then
            return 1
        fi
        [ "$waited" = 20 ] && echo "abinit: waiting up to $timeout s for PARTLABEL=$want_label" >&2
        usleep 100000
        waited=$((waited + 1))
    done
}

loader=$(loader_esp)
rootdev=$(wait_root "$rootlabel" "$loader") ||
    die "no block device with PARTLABEL=$rootlabel (modules loaded: $(cut -d' ' -f1 /proc/modules | tr '\n' ' '))"
rootsys=$(readlink -f "/sys/class/block/${rootdev#/dev/}")
disksys=${rootsys%/*}
disk=/dev/${disksys##*/}
say "root is $rootdev on disk $disk"

# --- 4b. dm-verity (abinit.verity=ROOTHASH,SALT,DATA_BLOCKS,HASH_OFFSET; docs/updater.md) -----
# The slot holds the squashfs (DATA_BLOCKS 4096-byte blocks) and, at byte HASH_OFFSET, the hash
# area `veritysetup format --hash-offset` writes (superblock, then the tree). Without the
# parameter the slot is mounted as it is. With it:
#   1. a check device (reads of damaged blocks fail with EIO), opened with veritysetup (static
#      from nixpkgs in mkSystem, Debian's in the fixture), is read from end to end: every
#      block against the root hash, so damage anywhere is found before anything of the slot
#      runs (abinit.verity_scan=0 skips this);
#   2. damage found: `abupdate mark-corrupt` (the initrd's own copy, not the slot's) records it
#      on the ESP and, if the other slot can take over, marks this one bad; then reboot. If no
#      other slot can (both damaged), this slot boots with its damaged blocks failing with EIO
#      and no restart on corruption, so there is no reboot loop;
#   3. the root is mounted from a device whose table has restart_on_corruption: a block found
#      damaged later reboots the machine at once, and the next boot's check (1) finds it.
rootfsdev=$rootdev
verity=
verity_scan=1
for word in $(cat /proc/cmdline); do
    case "$word" in
        abinit.verity=*) verity=${word#abinit.verity=} ;;
        abinit.verity_scan=*) verity_scan=${word#abinit.verity_scan=} ;;
    esac
done
verity_state=off
if [ -n "$verity" ]; then
    old_ifs=$IFS
    IFS=,
    # shellcheck disable=SC2086
    set -- $verity
    IFS=$old_ifs
    [ $# -eq 4 ] || die "abinit.verity=$verity: expected ROOTHASH,SALT,DATA_BLOCKS,HASH_OFFSET"
    v_hash=$1 v_salt=$2 v_blocks=$3 v_offset=$4
    case "$v_hash" in
        *[!0-9a-f]*) die "abinit.verity: root hash '$v_hash' is not lower-case hex" ;;
    esac
    [ ${#v_hash} -eq 64 ] || die "abinit.verity: root hash '$v_hash' is not a SHA-256 (64 hex digits)"
    case "$v_salt" in
        ''|*[!0-9a-f]*) die "abinit.verity: salt '$v_salt' is not lower-case hex" ;;
    esac
    case "$v_blocks" in ''|*[!0-9]*) die "abinit.verity: data blocks '$v_blocks' is not a number" ;; esac
    case "$v_offset" in ''|*[!0-9]*) die "abinit.verity: hash offset '$v_offset' is not a number" ;; esac
    [ "$v_blocks" -gt 0 ] && [ $((v_offset % 4096)) -eq 0 ] && [ "$v_offset" -ge $((v_blocks * 4096)) ] ||
        die "abinit.verity: hash offset $v_offset must be a multiple of 4096 at or after the $v_blocks data blocks"
    case "$verity_scan" in 0|1) ;; *) die "abinit.verity_scan=$verity_scan: 0 or 1" ;; esac
    command -v veritysetup >/dev/null 2>&1 || die "abinit.verity given, but the initrd has no veritysetup"
    [ -d /sys/module/dm_verity ] ||
        die "abinit.verity given, but dm-verity is not loaded (dm-mod, dm-verity in the initrd's modules)"
    # No udev here: libdevmapper makes the /dev/mapper nodes itself (and devtmpfs /dev/dm-N).
    DM_DISABLE_UDEV=1
    export DM_DISABLE_UDEV
    # v_open NAME [FLAG]: version 1, data and hash on the same partition, 4096-byte blocks, every
    # parameter from the command line (--no-superblock: nothing is taken from the unsigned
    # superblock), the tree one block after the superblock at HASH_OFFSET.
    v_open() {
        veritysetup open "$rootdev" "$1" "$rootdev" "$v_hash" --no-superblock --format=1 \
            --hash=sha256 --data-block-size=4096 --hash-block-size=4096 \
            --data-blocks="$v_blocks" --hash-offset=$((v_offset + 4096)) --salt="$v_salt" ${2:+"$2"} 2>&1
    }
    dm_node() {
        for d in /sys/block/dm-*; do
            [ "$(cat "$d/dm/name" 2>/dev/null)" = "$1" ] && [ -b "/dev/${d##*/}" ] && echo "/dev/${d##*/}" && return 0
        done
        return 1
    }
    v_flag=--restart-on-corruption
    verity_state=checked
    v_what=
    if [ "$verity_scan" = 1 ]; then
        v_t0=$(cut -d' ' -f1 /proc/uptime)
        # A device that cannot even be opened (its top hash block damaged) is damaged too.
        if ! v_err=$(v_open abroot-check); then
            v_what="the check device could not be opened: $(echo "$v_err" | tail -n 1)"
        elif ! v_node=$(dm_node abroot-check); then
            die "the verity check device has no node in /dev"
        elif ! v_err=$(dd if="$v_node" of=/dev/null bs=1M 2>&1); then
            v_what=$(dmesg | grep -o '[a-z]* block [0-9]* is corrupted' | head -n 1)
            v_what=${v_what:-a read failed: $(echo "$v_err" | head -n 1)}
        fi
        veritysetup close abroot-check 2>/dev/null
        if [ -n "$v_what" ]; then
            say "verity: slot $slot is CORRUPT: $v_what (root hash $v_hash)"
            verity_state=corrupt
        else
            say "verity: slot $slot matches its root hash ($v_blocks blocks read, from $v_t0 s to $(cut -d' ' -f1 /proc/uptime) s uptime)"
        fi
    else
        verity_state=unchecked
    fi
    if [ "$verity_state" = corrupt ]; then
        # /run is still the initramfs's: abupdate's lock file goes there.
        # --disk: the root is not mounted yet, so abupdate cannot find the booted disk itself.
        abupdate --disk "$disk" mark-corrupt "$slot" --detail "$v_what"
        rc=$?
        if [ $rc -eq 0 ]; then
            say "verity: slot $slot marked bad; rebooting into slot $(echo "$slot" | tr ab ba)"
            sync
            reboot -f
            sleep 5
            die "reboot failed"
        fi
        # 35: recorded, but the other slot cannot take over. Anything else: nothing recorded.
        say "verity: WARNING: slot $slot boots DAMAGED (abupdate mark-corrupt exited $rc): its damaged blocks fail with EIO, and nothing restarts on them"
        v_flag=
    fi
    v_err=$(v_open abroot "$v_flag") || die "veritysetup could not open slot $slot: $v_err"
    rootfsdev=$(dm_node abroot) || die "the verity device has no node in /dev"
    if [ -n "$v_flag" ]; then
        say "verity: root is $rootfsdev (a damaged block read later restarts the machine)"
    else
        say "verity: root is $rootfsdev (a damaged block read later fails with EIO)"
    fi
fi

# --- 5. the slot's root filesystem ---------------------------------------------------------
mount -t squashfs -o ro "$rootfsdev" /sysroot ||
    die "cannot mount $rootfsdev (PARTLABEL=$rootlabel) as squashfs: slot $slot is empty or damaged"

# Resolves a symlink chain inside /sysroot (absolute targets are relative to /sysroot).
resolve_in_root() {
    p=$1
    n=0
    while [ -L "/sysroot$p" ] && [ $n -lt 20 ]; do
        t=$(readlink "/sysroot$p")
        case "$t" in
            /*) p=$t ;;
            *) p=${p%/*}/$t ;;
        esac
        n=$((n + 1))
    done
    echo "$p"
}
init=$(resolve_in_root /init)
[ -f "/sysroot$init" ] && [ -x "/sysroot$init" ] ||
    die "slot $slot has no executable /init (it points at $init)"

for m in run tmp data; do
    [ -d "/sysroot/$m" ] || die "the root filesystem of slot $slot has no /$m mount point"
done

mount -t tmpfs -o mode=0755,nosuid,nodev tmpfs /run || die "cannot mount tmpfs on /run"
mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs /sysroot/tmp || die "cannot mount tmpfs on /tmp"

# --- 6. the data partition -----------------------------------------------------------------
datadev=$(wait_label data "$disksys") || die "no partition labelled data on $disk"

# ext2/3/4 superblock magic 0xEF53 at byte 1080.
has_extfs() {
    [ "$(dd if="$1" bs=1 skip=1080 count=2 2>/dev/null | hexdump -e '2/1 "%02x"')" = 53ef ]
}

if ! has_extfs "$datadev"; then
    if command -v mkfs.ext4 >/dev/null 2>&1; then
        say "first boot: creating an ext4 filesystem on $datadev"
        mkfs.ext4 -q -F -t ext4 -L data "$datadev" || die "mkfs.ext4 $datadev failed"
    else
        say "first boot: creating an ext2 filesystem on $datadev (busybox mke2fs)"
        mke2fs -F -L data "$datadev" >/dev/null || die "mke2fs $datadev failed"
    fi
fi
if command -v e2fsck >/dev/null 2>&1; then
    e2fsck -p "$datadev"
    rc=$?
    [ $rc -lt 4 ] || say "warning: e2fsck -p $datadev exited with $rc; trying to mount anyway"
fi
# A partition larger than its filesystem (abupdate grew it to fill a larger disk): grow the
# filesystem, offline, before mounting it. Superblock at 1024: blocks (lo) at +4, log2(block
# size / 1024) at +24.
if command -v resize2fs >/dev/null 2>&1 && has_extfs "$datadev"; then
    sb32() { dd if="$datadev" bs=1 skip="$1" count=4 2>/dev/null | hexdump -e '1/4 "%u"'; }
    fsbytes=$(( $(sb32 1028) * (1024 << $(sb32 1048)) ))
    partbytes=$(( $(cat "/sys/class/block/${datadev#/dev/}/size") * 512 ))
    if [ $((partbytes - fsbytes)) -ge 8388608 ]; then
        say "growing the data filesystem from $((fsbytes >> 20)) MiB to its partition's $((partbytes >> 20)) MiB"
        e2fsck -f -p "$datadev" >/dev/null
        resize2fs "$datadev" >/dev/null 2>&1 || say "warning: resize2fs $datadev failed; keeping the old size"
    fi
fi
# The ext4 driver mounts ext2 and ext3 too.
mount -t ext4 -o rw,noatime "$datadev" /sysroot/data ||
    die "cannot mount the data partition $datadev"

# Persistent directories: /var (and anything the system keeps under /data).
mkdir -p /sysroot/data/var || die "cannot create /data/var"
if [ -d /sysroot/var ]; then
    mount --bind /sysroot/data/var /sysroot/var || die "cannot bind /data/var on /var"
else
    say "warning: the root filesystem has no /var mount point; /var is not persistent"
fi

# --- 7. tell the system how it was booted, then switch -------------------------------------
mkdir -p /run/abinit
{
    echo "AB_SLOT=$slot"
    echo "AB_ROOT_LABEL=$rootlabel"
    echo "AB_ROOT_DEV=$rootdev"
    echo "AB_DISK=$disk"
    echo "AB_DATA_DEV=$datadev"
    [ ! -e /tmp/abinit-guessed ] || echo "AB_DISK_GUESSED=1"
    echo "AB_VERITY=$verity_state"
} > /run/abinit/env

handover_hw_watchdog
for m in dev proc sys run; do
    mount --move "/$m" "/sysroot/$m" || die "cannot move /$m into the new root"
done
say "switching to slot $slot: $init"
[ -z "$watchdog_pid" ] || kill "$watchdog_pid" 2>/dev/null
trap - EXIT
exec switch_root /sysroot "$init"
# Only reached if exec itself failed; switch_root exits non-zero on its own errors, which
# kills PID 1 as well.
echo "abinit: FATAL: switch_root failed"
exit 1
